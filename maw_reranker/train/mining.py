"""Hard-negative mining into a reusable file: a TREC run of the kept negatives that `train --candidates` samples from.

Like sentence-transformers' ``mine_hard_negatives`` (negatives mined once into a file, margin and score rules of
the same kind), but with training's rank window, not its ``range_min`` / ``range_max`` (see step 2). Per training
query (a query with a judged positive; ``max_queries`` and ``missing_positives`` pick the queries as train does,
``train/sources.training_positives`` and ``subset_queries``):

1. rank its candidates with the *miner*: ``bm25`` keeps the candidate pool's own order and scores (the dataset's
   BM25 pool from ``retrieve/``, or any run given as ``candidates``); ``cross-encoder`` rescores the top
   ``rescore_depth`` candidates with ``model`` (through ``evaluate/rerank.score_pairs``, the one scoring loop) and
   ranks them by that score;
2. keep the candidates at 1-based ranks ``neg_rank_min``..``neg_rank_max`` (both inclusive) of that whole order: the
   positives and every other judged document count as ranks, as in train's ``neg_rank_min`` / ``neg_rank_max``,
   and the rules below apply inside the window. sentence-transformers (6.2) differs: its ``range_min`` is a 0-based
   count of top hits to skip and ``range_max`` the last position kept, both counted after the positives (and the
   candidates its margin / score rules reject) are taken out of its top ``range_max + max_positives`` hits. So its
   ``range_min=k, range_max=m`` is ``neg_rank_min=k+1, neg_rank_max=m`` here only when no positive or rejected candidate
   ranks above its m-th kept hit; in general ``neg_rank_min = k + 1 + (those ranked above its (k+1)-th kept hit)`` and
   ``neg_rank_max = m + (those ranked above its m-th kept hit)``, a shift that differs per query, so no fixed setting
   reproduces it;
3. drop every judged document of grade > ``max_negative_grade`` (so the positives, grade >= ``relevance_threshold``,
   are never mined), and candidates outside ``min_score``..``max_score``;
4. drop likely false negatives, candidates scoring too close to the query's positive: ``margin`` (absolute: a
   candidate scoring above ``positive - margin`` is skipped) and/or ``relative_margin`` (above
   ``positive - |positive| * relative_margin`` is skipped, as sentence-transformers computes it); with several positives the reference is the lowest-scored
   (``margin_reference: min``) or the best-scored one (``max``);
5. keep at most ``num_negatives``: the best ranked (``sampling_strategy: top``) or a seeded random subset (``random``), in
   rank order.

The result is written atomically (``utils/io.atomic_write``: an error or interrupt midway leaves no partial file
and an earlier output intact), one query at a time in the miner's order with the miner's scores, and a JSON
sidecar ``<output_run>.json`` records the settings, inputs, counts and provenance. Training reads it with no new
option: ``train --candidates mined.run`` (a query may have fewer negatives than ``num_negatives``: training repeats
them; a query without any is skipped).
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Mapping, Optional, Sequence

import numpy as np

from maw_reranker.config.parser import options_to_dict
from maw_reranker.config.sections import (DatasetOptions, ModelOptions, NegativeOptions, NegativeSampling,
                                          PoolOptions, Precision,
                                          candidates_from_options, dataset_from_options, opt, resolve_model_path)
from maw_reranker.data.dataset import fetch_texts
from maw_reranker.train.data import consecutive_runs
from maw_reranker.train.sources import subset_queries, training_positives
from maw_reranker.utils.errors import OptionError
from maw_reranker.utils.text import preview

log = logging.getLogger(__name__)

Miner = Literal["bm25", "cross-encoder"]
SIDECAR_SUFFIX = ".json"
# Cross-encoder: queries are scored together until this many pairs are pending (one length-sorted score_pairs call).
PAIRS_PER_CHUNK_BATCHES = 32
# Why a candidate of the rank window was not kept, in the order the rules are applied.
SKIP_REASONS = ("judged", "max_score", "min_score", "no_scored_positive", "margin", "relative_margin", "beyond_num")


class MiningError(ValueError):
    """The negatives cannot be mined as asked; the message names the data or the option."""


@dataclass
class MineOptions(NegativeOptions, PoolOptions, ModelOptions, DatasetOptions):
    """Every setting of `maw-rerank mine-negatives` (the dataset, pool and model sections are shared with train)."""

    CONFIG_KINDS = ("datasets", "models")

    RENAMED = {"output": "use 'output_run' (the mined TREC run)", "rank_min": "use 'neg_rank_min'",
               "rank_max": "use 'neg_rank_max'", "sampling": "use 'sampling_strategy'"}

    output_run: str = opt("", "the mined TREC run (negatives only, in the miner's order with its scores); a JSON "
                              "sidecar <output_run>.json records settings and inputs. Train on it with --candidates")
    miner: Miner = opt("bm25", "bm25 = the candidate pool's own ranks and scores (its BM25 pool, or the run given as "
                               "candidates); cross-encoder = rescore the top rescore_depth candidates with model")
    # (also: neg_rank_min/max, relevance_threshold, max_negative_grade, missing_positives, max_queries from
    # NegativeOptions, shared with train; two defaults differ, as sentence-transformers' mine_hard_negatives has them)
    num_negatives: int = opt(10, "negatives kept per query, at most")
    sampling_strategy: NegativeSampling = opt("top", "which of the candidates left to keep: top = the best ranked; "
                                                     "random = a random subset (seed), written in rank order")
    margin: Optional[float] = opt(None, "absolute margin: skip a candidate scoring above (positive score - margin), "
                                        "a likely false negative (None = off; 0 skips those above the positive)")
    relative_margin: Optional[float] = opt(None, "relative margin in [0, 1): skip a candidate scoring above "
                                                 "positive - |positive| * relative_margin, as sentence-transformers "
                                                 "does (None = off)")
    margin_reference: Literal["min", "max"] = opt("min", "the positive the margins compare with when a query has "
                                                         "several: min = the lowest-scored (strictest), max = the "
                                                         "best-scored")
    max_score: Optional[float] = opt(None, "skip candidates scoring above this (None = off)")
    min_score: Optional[float] = opt(None, "skip candidates scoring below this (None = off)")
    rescore_depth: Optional[int] = opt(None, "cross-encoder: candidates rescored per query (default: neg_rank_max); "
                                             "must be >= neg_rank_max")
    batch_size: int = opt(32, "cross-encoder: pairs per forward pass")
    precision: Precision = opt("fp32", "cross-encoder: fp32, or autocast to bf16/fp16")
    device: Optional[str] = opt(None, "cross-encoder: cpu, cuda, cuda:1 ... (default: cuda if available)")
    seed: int = opt(0, "seed of sampling_strategy: random")
    tag: Optional[str] = opt(None, "run tag of the output (default: mined-<miner>)")
    progress: bool = opt(True, "show a progress bar (queries)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.output_run).strip():
            raise OptionError("option 'output_run' is empty: give the path of the mined run (e.g. mined.run)")
        if not str(self.dataset).strip():
            raise OptionError("option 'dataset' is empty: give the training dataset (name or path)")
        if self.batch_size < 1:
            raise OptionError(f"option 'batch_size' must be >= 1, got {self.batch_size}")
        if self.margin is not None and self.margin < 0:
            raise OptionError(f"option 'margin' must be >= 0 or null, got {self.margin}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise OptionError(f"option 'relative_margin' must be in [0, 1) or null, got {self.relative_margin}")
        if self.max_score is not None and self.min_score is not None and self.min_score > self.max_score:
            raise OptionError(f"option 'min_score' ({self.min_score}) is above 'max_score' ({self.max_score})")
        if self.seed < 0:
            raise OptionError(f"option 'seed' must be >= 0, got {self.seed}")
        if self.tag is not None and (not self.tag.strip() or len(self.tag.split()) != 1):
            raise OptionError(f"option 'tag' must be one word (a TREC run column), got {self.tag!r}")
        if self.miner == "cross-encoder":
            if not str(self.model).strip():
                raise OptionError("option 'model' is empty: miner cross-encoder needs a model (hub id or folder)")
            if self.rescore_depth is not None and self.rescore_depth < self.neg_rank_max:
                raise OptionError(f"option 'rescore_depth' ({self.rescore_depth}) is below 'neg_rank_max' "
                                  f"({self.neg_rank_max}): the ranks are ranks among the rescored candidates")
        else:
            if str(self.model).strip():
                raise OptionError(f"option 'model' ({self.model}) is used by miner cross-encoder only; set miner: "
                                  "cross-encoder to mine with it, or leave model out")
            if self.rescore_depth is not None:
                raise OptionError("option 'rescore_depth' applies to miner cross-encoder only")

    @property
    def effective_rescore_depth(self) -> Optional[int]:
        if self.miner != "cross-encoder":
            return None
        return self.rescore_depth if self.rescore_depth is not None else self.neg_rank_max

    @property
    def uses_margins(self) -> bool:
        return self.margin is not None or self.relative_margin is not None


@dataclass
class MiningResult:
    output: Path
    sidecar: Path
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0


def sidecar_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def reference_score(scores: Sequence[float], how: str) -> Optional[float]:
    """The positive score the margins compare with: the lowest (``min``) or best (``max``); None when unscored."""
    if not scores:
        return None
    return min(scores) if how == "min" else max(scores)


def select_negatives(ranked: Sequence[tuple[str, float]], judged: Mapping[str, int], positive_scores: Sequence[float],
                     opts: MineOptions, rng: Optional[np.random.Generator] = None
                     ) -> tuple[list[tuple[str, float]], Counter]:
    """One query's negatives from its candidates ``ranked`` best first (docid, miner score).

    Returns the kept ``(docid, score)`` in rank order, and how many candidates of the rank window each rule
    skipped (``SKIP_REASONS``; each candidate counted once, under the first rule that skips it).
    """
    skipped: Counter = Counter()
    reference = reference_score(positive_scores, opts.margin_reference)
    left = []
    for docid, score in ranked[opts.neg_rank_min - 1:opts.neg_rank_max]:
        if judged.get(docid, 0) > opts.max_negative_grade:
            reason = "judged"
        elif opts.max_score is not None and score > opts.max_score:
            reason = "max_score"
        elif opts.min_score is not None and score < opts.min_score:
            reason = "min_score"
        elif opts.uses_margins and reference is None:
            reason = "no_scored_positive"
        elif opts.margin is not None and score > reference - opts.margin:
            reason = "margin"
        elif opts.relative_margin is not None and score > reference - abs(reference) * opts.relative_margin:
            reason = "relative_margin"
        else:
            left.append((docid, score))
            continue
        skipped[reason] += 1
    if len(left) > opts.num_negatives:
        skipped["beyond_num"] += len(left) - opts.num_negatives
        if opts.sampling_strategy == "random":
            rng = rng if rng is not None else np.random.default_rng(opts.seed)
            keep = sorted(rng.choice(len(left), size=opts.num_negatives, replace=False))
            left = [left[i] for i in keep]
        else:
            left = left[:opts.num_negatives]
    return left, skipped


def query_rng(seed: int, qid: str) -> np.random.Generator:
    """A query's own generator: random sampling does not depend on the order or subset of queries mined."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode("utf-8"))])


def _ranked(hits: Mapping[str, float]) -> list[tuple[str, float]]:
    """Candidates best first by score; ties keep the run's order (as training's ``rank_candidates``)."""
    return sorted(((str(d), float(s)) for d, s in hits.items()), key=lambda kv: -kv[1])


def _check_output(opts: MineOptions, candidates_path: Optional[str] = None) -> Path:
    from maw_reranker.utils.io import check_not_an_input, check_writable

    output = Path(opts.output_run).expanduser()
    check_writable(output, "output_run", is_file=True)
    inputs = {name: getattr(opts, name) for name in ("dataset", "queries", "qrels", "run", "candidates")}
    if candidates_path:
        inputs["candidates"] = candidates_path
    if opts.miner == "cross-encoder":
        inputs["model"] = resolve_model_path(opts.model)
    check_not_an_input({"output_run": output, "output_run (its sidecar)": sidecar_path(output)}, inputs)
    return output


def _query_stream(candidates, targets: set) -> Iterator[tuple[str, dict]]:
    """(qid, {docid: score}) of every target query in the candidates: in qid order from memory, else in run order."""
    if candidates.run is not None:
        for qid in sorted(candidates.run):
            if qid in targets:
                yield qid, candidates.run[qid]
        return
    seen: set = set()
    for qid, hits in consecutive_runs(candidates.rows()):
        if qid in seen:
            raise MiningError(f"the candidates of query {qid!r} are not contiguous in {candidates.description}; sort "
                              "the run by query (e.g. sort -s -k1,1) before mining")
        seen.add(qid)
        if qid in targets:
            yield qid, hits


def _file_stamp(path) -> Optional[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}


class _Scorer:
    """The cross-encoder miner: scores (query, document) pairs through ``evaluate.rerank.score_pairs``."""

    def __init__(self, opts: MineOptions, model_path: str):
        from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

        self.opts = opts
        self.model = CrossEncoderWithMAW.from_pretrained(model_path, maw=opts.maw_spec, max_length=opts.max_length,
                                                         fresh_maw=opts.fresh_maw,
                                                         device=opts.device)

    def __call__(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        from maw_reranker.evaluate import rerank

        return rerank.score_pairs(self.model, pairs, batch_size=self.opts.batch_size, precision=self.opts.precision,
                                  show_progress=False)


def _missing(docs, docids, what: str, where: str) -> dict:
    texts = fetch_texts(docs, docids)
    missing = [d for d in dict.fromkeys(docids) if d not in texts]
    if missing:
        raise MiningError(f"{len(missing)} {what} of {where} are missing from the corpus: {preview(missing)} "
                          "(wrong docs file or mismatched ids?)")
    return texts


def mine_negatives(opts: MineOptions) -> MiningResult:
    """Mine, write the run and its sidecar (see the module docstring); return where and what was written."""
    from maw_reranker.utils.io import atomic_write, write_json
    from maw_reranker.utils.progress import progress_bar
    from maw_reranker.utils.provenance import run_metadata

    start = time.perf_counter()
    output = _check_output(opts)
    model_path = None
    if opts.miner == "cross-encoder":
        from maw_reranker.cross_encoder.checks import check_device, check_model_dir

        model_path = resolve_model_path(opts.model)
        check_model_dir(model_path, opts.max_length)
        check_device(opts.device)
    ds = dataset_from_options(opts)
    label = f"dataset {ds.name}" + (f" (split {ds.split})" if ds.split else "")
    qrels = ds.qrels()
    if not qrels:
        raise MiningError(f"{label} has no qrels (relevance judgments): no positive to mine negatives for")
    # train's base set and subset (train/sources.py), so max_queries picks the queries train picks
    docs = ds.docs() if opts.miner == "cross-encoder" or opts.missing_positives == "skip" else None
    positives = training_positives(qrels, opts.relevance_threshold, opts.missing_positives, docs, label)
    if not positives:
        raise MiningError(f"{label}: no query has a positive (a qrels grade >= relevance_threshold="
                          f"{opts.relevance_threshold}{', in the corpus' if opts.missing_positives == 'skip' else ''})"
                          "; check the threshold or the qrels")
    targets = set(positives)
    if opts.max_queries is not None:
        targets = set(subset_queries(targets, opts.max_queries))
    queries = ds.queries()
    no_text = sorted(targets - set(queries))
    if no_text:
        raise MiningError(f"{label}: {len(no_text)} judged queries have no query text: {preview(no_text)}")
    candidates = candidates_from_options(opts, ds, streaming=True)
    where = candidates.description
    _check_output(opts, candidates.source.get("path"))
    scorer = _Scorer(opts, model_path) if model_path is not None else None
    tag = opts.tag or f"mined-{opts.miner}"
    counts: Counter = Counter()
    skipped: Counter = Counter()
    sidecar = sidecar_path(output)
    chunk_pairs = opts.batch_size * PAIRS_PER_CHUNK_BATCHES
    progress = progress_bar(len(targets), opts.progress, "mining negatives", unit="query")

    def emit(handle, qid: str, ranked: list, positive_scores: list) -> None:
        counts["queries_in_candidates"] += 1
        kept, why = select_negatives(ranked, qrels.get(qid, {}), positive_scores, opts, query_rng(opts.seed, qid))
        skipped.update(why)
        if not kept:
            counts["queries_without_negatives"] += 1
        else:
            counts["queries_mined"] += 1
            counts["negatives"] += len(kept)
            counts["queries_short"] += len(kept) < opts.num_negatives
        for rank, (docid, score) in enumerate(kept, 1):
            handle.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
        progress.update(1)

    def flush(handle, pending: list, texts: dict) -> None:
        """Cross-encoder: score the pending queries' candidates (and positives, when margins need them) at once."""
        pairs = []
        for qid, head, pos in pending:
            pairs += [(queries[qid], texts[d]) for d, _ in head]
            if opts.uses_margins:
                pairs += [(queries[qid], texts[d]) for d in pos]
        scores = scorer(pairs) if pairs else np.zeros(0, np.float32)
        at = 0
        for qid, head, pos in pending:
            ce = scores[at:at + len(head)]
            at += len(head)
            pos_scores = [float(s) for s in scores[at:at + len(pos)]] if opts.uses_margins else []
            at += len(pos) if opts.uses_margins else 0
            order = sorted(range(len(head)), key=lambda i: (-float(ce[i]), i))
            emit(handle, qid, [(head[i][0], float(ce[i])) for i in order], pos_scores)
        pending.clear()

    try:
        with atomic_write(output) as handle:
            pending: list = []
            texts: dict = {}
            n_pending = 0
            for qid, hits in _query_stream(candidates, targets):
                ranked = _ranked(hits)
                pos = positives[qid]
                if scorer is None:
                    in_pool = [hits[d] for d in pos if d in hits]
                    counts["unscored_positives"] += len(pos) - len(in_pool)
                    emit(handle, qid, ranked, in_pool)
                    continue
                head = ranked[:opts.effective_rescore_depth]
                wanted = [d for d, _ in head]
                texts.update(_missing(docs, wanted, "candidate documents", where))
                if opts.uses_margins:
                    texts.update(_missing(docs, pos, "positive documents", f"the qrels of {label}"))
                pending.append((qid, head, pos if opts.uses_margins else []))
                n_pending += len(head) + (len(pos) if opts.uses_margins else 0)
                if n_pending >= chunk_pairs:
                    flush(handle, pending, texts)
                    texts, n_pending = {}, 0
            if pending:
                flush(handle, pending, texts)
            counts["queries_with_positive"] = len(targets)
            counts["queries_not_in_candidates"] = len(targets) - counts["queries_in_candidates"]
            if not counts["negatives"]:
                raise MiningError(_nothing_mined(opts, where, counts, skipped))
            sidecar.unlink(missing_ok=True)  # from here until the new sidecar is written, no stale one describes it
    finally:
        progress.close()
    for reason in SKIP_REASONS:
        skipped.setdefault(reason, 0)
    _warn(opts, where, counts)
    seconds = time.perf_counter() - start
    summary = {key: int(counts.get(key, 0)) for key in (
        "queries_with_positive", "queries_in_candidates", "queries_not_in_candidates", "queries_mined",
        "queries_without_negatives", "queries_short", "negatives", "unscored_positives"
        )}
    summary["skipped"] = {reason: int(skipped[reason]) for reason in SKIP_REASONS}
    meta = run_metadata(options_to_dict(opts))
    write_json(sidecar, {
        "kind": "mined_negatives",
        "output": str(output.resolve()),
        "run_bytes": output.stat().st_size,
        "format": "TREC run 'qid Q0 docid rank score tag': per query the kept negatives in the miner's order, "
                  "scores of the miner; train on it with --candidates",
        "settings": {"miner": opts.miner, "neg_rank_min": opts.neg_rank_min, "neg_rank_max": opts.neg_rank_max,
                     "num_negatives": opts.num_negatives, "sampling_strategy": opts.sampling_strategy, "seed": opts.seed,
                     "margin": opts.margin, "relative_margin": opts.relative_margin,
                     "margin_reference": opts.margin_reference, "max_score": opts.max_score,
                     "min_score": opts.min_score, "relevance_threshold": opts.relevance_threshold,
                     "max_negative_grade": opts.max_negative_grade, "max_queries": opts.max_queries,
                     "missing_positives": opts.missing_positives,
                     "rescore_depth": opts.effective_rescore_depth, "tag": tag},
        "inputs": {
            "dataset": {"name": ds.name, "split": ds.split, "source": str(ds.source)},
            "candidates": {**candidates.source, "file": _file_stamp(candidates.source["path"])
                           if candidates.source.get("path") else None},
            "model": None if model_path is None else {
                "model": opts.model, "path": model_path, "maw": opts.maw, "max_length": opts.max_length,
                "precision": opts.precision, "batch_size": opts.batch_size},
        },
        "counts": summary,
        "seconds": round(seconds, 3),
        "provenance": meta,
    })
    log.info("mined %d negatives for %d queries into %s (%.1f s)", summary["negatives"], summary["queries_mined"],
             output, seconds)
    return MiningResult(output, sidecar, summary, seconds)


def _nothing_mined(opts: MineOptions, where: str, counts: Counter, skipped: Counter) -> str:
    if not counts["queries_in_candidates"]:
        return (f"none of the {counts['queries_with_positive']} queries with a positive has candidates in {where} "
                "(mismatched query ids?)")
    rules = ", ".join(f"{reason} {n}" for reason, n in skipped.most_common() if n) or "none"
    return (f"no negative left for any query: candidates at ranks {opts.neg_rank_min}-{opts.neg_rank_max} of {where} "
            f"skipped by rule: {rules}; widen the rank window or loosen margin/relative_margin/max_score")


def _warn(opts: MineOptions, where: str, counts: Counter) -> None:
    if counts["queries_not_in_candidates"]:
        log.warning("%d queries with a positive have no candidates in %s and get no negatives",
                    counts["queries_not_in_candidates"], where)
    if counts["queries_without_negatives"]:
        log.warning("%d queries have no negative left after the rules (training skips them)",
                    counts["queries_without_negatives"])
    if opts.uses_margins and counts["unscored_positives"]:
        log.warning("%d positives are not in the candidate pool, so BM25 has no score for them: they are left out of "
                    "the margin reference (a query none of whose positives is in the pool gets no negatives); a "
                    "deeper pool (pool_k) or miner cross-encoder scores them", counts["unscored_positives"])
