"""The reranking loop: candidate pool + texts -> (query, document) pairs to a depth -> model scores -> reranked run.

Fast by construction: all pairs of a process are sorted by length once (characters, as sentence-transformers
does) and scored in consecutive chunks, inside which ``CrossEncoderWithMAW.predict`` re-sorts by token length and
pads each batch only to its own longest pair, under ``torch.inference_mode`` and (optionally) autocast. Launched
with ``accelerate launch``, each process scores a disjoint share of the queries and the results are gathered.

Bad input is never silently absorbed: pool queries without query text and pool documents missing from the corpus
raise :class:`RerankError` naming them, or, with ``on_missing="skip"``, are skipped, logged and reported in
:attr:`RerankResult.skipped_docs` / :attr:`RerankResult.skipped_queries`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from maw_reranker.data.dataset import fetch_texts
from maw_reranker.utils.progress import progress_bar
from maw_reranker.utils.text import preview

logger = logging.getLogger(__name__)

# Pairs per predict() call = batch_size * this: small enough for a lively progress bar, and since the pairs are
# already globally length-sorted, chunking costs no extra padding.
BATCHES_PER_CHUNK = 4


class RerankError(ValueError):
    """The pool cannot be reranked as asked (empty, unknown queries or documents); the message names the ids."""


class Pair(NamedTuple):
    qid: str
    docid: str
    query: str
    doc: str
    first_stage_rank: int  # 1-based, in the pool's own order (score descending, ties by docid)
    first_stage_score: float


@dataclass
class PairSet:
    """The pairs to score, plus what was left out and why."""

    pairs: list[Pair]
    qids: list[str]  # every query of the reranked run, in order (a query may end up with no pair after skips)
    tail: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # candidates beyond the depth
    skipped_queries: list[str] = field(default_factory=list)
    skipped_docs: dict[str, list[str]] = field(default_factory=dict)  # qid -> docids missing from the corpus


@dataclass
class RerankResult:
    run: dict[str, dict[str, float]]
    rows: list[tuple]  # (qid, docid, score, first_stage_rank, first_stage_score), in pool order
    depth_rows: list[dict]  # {"qid", "docid", "layers": {"<layer>": {"weights": [...], "selected": k}}}
    n_pairs: int
    seconds: float  # scoring time (the slowest process when sharded)
    depth: int | None
    skipped_queries: list[str] = field(default_factory=list)
    skipped_docs: dict[str, list[str]] = field(default_factory=dict)
    num_processes: int = 1

    @property
    def pairs_per_second(self) -> float:
        return self.n_pairs / self.seconds if self.seconds > 0 else float("nan")

    def info(self) -> dict:
        """JSON-ready bookkeeping (no per-pair data)."""
        return {"pairs": self.n_pairs, "queries": len(self.run), "depth": self.depth,
                "seconds": round(self.seconds, 3), "pairs_per_s": round(self.pairs_per_second, 3),
                "num_processes": self.num_processes, "skipped_queries": self.skipped_queries,
                "skipped_docs": self.skipped_docs,
                "n_skipped_docs": sum(len(v) for v in self.skipped_docs.values())}


def ranked_pool(candidates: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's candidates in first-stage order: score descending, ties by docid (as ``write_run`` orders)."""
    return sorted(((str(d), float(s)) for d, s in candidates.items()), key=lambda kv: (-kv[1], kv[0]))


def build_pairs(pool: Mapping[str, Mapping[str, float]], queries: Mapping[str, str], docs: Mapping[str, str],
                depth: int | None = None, on_missing: str = "error", max_queries: int | None = None) -> PairSet:
    """(query, document) pairs for the top-``depth`` candidates of every pool query (``None``: the whole pool).

    ``max_queries`` keeps the first N pool queries in id order (quick subsets). ``on_missing``: ``"error"``
    (default) or ``"skip"`` for pool queries without text and pool documents missing from ``docs``.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if depth is not None and (not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be a positive integer or None (the whole pool), got {depth!r}")
    if not pool or not any(len(c) for c in pool.values()):
        raise RerankError("the candidate pool is empty: no (query, document) pair to rerank")
    qids = sorted(str(q) for q in pool)
    if max_queries is not None:
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        qids = qids[:max_queries]

    unknown_q = [q for q in qids if q not in queries]
    if unknown_q:
        if on_missing == "error":
            raise RerankError(
                f"{len(unknown_q)} of {len(qids)} pool queries have no query text in the dataset: "
                f"{preview(unknown_q)} (mismatched ids? pass on_missing=skip to skip them)")
        logger.warning("skipping %d pool queries without query text: %s", len(unknown_q), preview(unknown_q))
        qids = [q for q in qids if q in queries]
        if not qids:
            raise RerankError("no pool query has a query text in the dataset: mismatched ids?")

    ranked = {q: ranked_pool(pool[q]) for q in qids}
    head = {q: r[:depth] if depth is not None else r for q, r in ranked.items()}
    texts = fetch_texts(docs, (d for r in head.values() for d, _ in r))
    missing = {q: [d for d, _ in r if d not in texts] for q, r in head.items()}
    missing = {q: ds for q, ds in missing.items() if ds}
    if missing:
        n = sum(len(v) for v in missing.values())
        examples = [f"{q}/{d}" for q, ds in missing.items() for d in ds]
        if on_missing == "error":
            raise RerankError(
                f"{n} pool documents (in {len(missing)} queries) are missing from the corpus, as query/doc: "
                f"{preview(examples)} (wrong docs file or mismatched ids? pass on_missing=skip to skip them)")
        # Not refilled from beyond the depth: the skipped documents are simply absent from the reranked run.
        logger.warning("skipping %d pool documents missing from the corpus (in %d queries): %s",
                       n, len(missing), preview(examples))

    pairs = [Pair(q, d, queries[q], texts[d], rank, score)
             for q in qids for rank, (d, score) in enumerate(head[q], 1) if d in texts]
    empty = [q for q in qids if not any(d in texts for d, _ in head[q])]
    if empty:
        logger.warning("%d queries have no candidate left to rerank: %s", len(empty), preview(empty))
    if not pairs:
        raise RerankError("no (query, document) pair left to rerank after skipping missing documents")
    tail = {q: r[depth:] for q, r in ranked.items()} if depth is not None else {}
    return PairSet(pairs, qids, {q: t for q, t in tail.items() if t}, unknown_q if on_missing == "skip" else [],
                   missing)


def score_pairs(model, pairs: Sequence[tuple[str, str]], batch_size: int = 32, precision: str = "fp32",
                return_depth: bool = False, show_progress: bool = False, desc: str = "reranking"):
    """Scores (float32 logits) of ``(query, doc)`` pairs, in input order, and the MAW depth log when asked.

    Globally length-sorted, then ``model.predict`` on consecutive chunks (see BATCHES_PER_CHUNK).
    Returns ``scores`` or ``(scores, {layer: {"weights": [N, D], "selected": [N]}})``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(pairs)
    scores = np.zeros(n, dtype=np.float32)
    depth: dict[int, dict[str, np.ndarray]] = {}
    order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
    chunk = batch_size * BATCHES_PER_CHUNK
    progress = progress_bar(n, show_progress, desc)
    try:
        for start in range(0, n, chunk):
            idx = order[start:start + chunk]
            out = model.predict([pairs[i] for i in idx], batch_size=batch_size, precision=precision,
                                return_depth=return_depth)
            if return_depth:
                out, layers = out
                for layer, info in layers.items():
                    if layer not in depth:
                        depth[layer] = {"weights": np.zeros((n, info["weights"].shape[1]), np.float32),
                                        "selected": np.zeros(n, np.int64)}
                    depth[layer]["weights"][idx] = info["weights"]
                    depth[layer]["selected"][idx] = info["selected"]
            scores[idx] = out
            progress.update(len(idx))
    finally:
        progress.close()
    return (scores, depth) if return_depth else scores


def shard_qids(qids: Sequence[str], index: int, count: int) -> list[str]:
    """This process's share of the queries (round robin: pools are about equally deep per query)."""
    return list(qids[index::count])


def depth_rows(pairs: Sequence[Pair], depth: Mapping[int, Mapping[str, np.ndarray]]) -> list[dict]:
    """One JSON-ready row per pair: per-layer depth weights (6 decimals) and the selected depth."""
    rows = []
    for i, p in enumerate(pairs):
        layers = {str(layer): {"weights": [round(float(w), 6) for w in info["weights"][i]],
                               "selected": int(info["selected"][i])} for layer, info in sorted(depth.items())}
        rows.append({"qid": p.qid, "docid": p.docid, "layers": layers})
    return rows


def distributed_state() -> Any | None:
    """Accelerate's process state when launched with several processes (``accelerate launch``), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without cpu=True Accelerate treats CPU-only processes as not distributed (each would score everything).
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def _gather(values: list, state) -> list:
    if state is None:
        return values
    from accelerate.utils import gather_object

    return gather_object(values)


def rerank(model, pool: Mapping[str, Mapping[str, float]], queries: Mapping[str, str], docs: Mapping[str, str], *,
           depth: int | None = None, batch_size: int = 32, precision: str = "fp32", on_missing: str = "error",
           max_queries: int | None = None, log_depth: bool = True, show_progress: bool = True,
           append_tail: bool = False, state: Any | None = None) -> RerankResult:
    """Rerank ``pool`` (qid -> {docid: first-stage score}) with ``model`` (a ``CrossEncoderWithMAW``).

    ``state``: an Accelerate state (``distributed_state()``); each process then scores its share of the queries
    and every process receives the gathered result. ``append_tail``: keep the candidates beyond ``depth`` in
    the run, below the reranked ones and in first-stage order (so that e.g. R@1000 of the pool is preserved).
    """
    pair_set = build_pairs(pool, queries, docs, depth=depth, on_missing=on_missing, max_queries=max_queries)
    pairs = pair_set.pairs
    processes = state.num_processes if state is not None else 1
    if processes > 1:
        mine = set(shard_qids(pair_set.qids, state.process_index, processes))
        pairs = [p for p in pairs if p.qid in mine]
    main = state is None or state.is_main_process
    want_depth = log_depth and bool(_maw_layer_count(model))
    start = time.perf_counter()
    out = score_pairs(model, [(p.query, p.doc) for p in pairs], batch_size=batch_size, precision=precision,
                      return_depth=want_depth, show_progress=show_progress and main)
    seconds = time.perf_counter() - start
    scores, layer_depth = out if want_depth else (out, {})
    rows = [(p.qid, p.docid, float(s), p.first_stage_rank, p.first_stage_score) for p, s in zip(pairs, scores)]
    dlog = depth_rows(pairs, layer_depth) if want_depth else []
    if processes > 1:
        rows, dlog = _gather(rows, state), _gather(dlog, state)
        seconds = max(_gather([seconds], state))
        # Back to pool order, whatever the shard interleaving was.
        position = {(p.qid, p.docid): i for i, p in enumerate(pair_set.pairs)}
        rows.sort(key=lambda r: position[(r[0], r[1])])
        dlog.sort(key=lambda r: position[(r["qid"], r["docid"])])

    run: dict[str, dict[str, float]] = {q: {} for q in pair_set.qids}
    for qid, docid, score, _, _ in rows:
        run[qid][docid] = score
    if append_tail:
        for qid, tail in pair_set.tail.items():
            floor = min(run[qid].values(), default=0.0)
            # Strictly below every reranked score, decreasing in first-stage order.
            for i, (docid, _) in enumerate(tail, 1):
                run[qid][docid] = floor - float(i)
    result = RerankResult(run, rows, dlog, len(rows), seconds, depth, pair_set.skipped_queries,
                          pair_set.skipped_docs, processes)
    if main:
        logger.info("reranked %d pairs of %d queries in %.1f s (%.1f pairs/s, %s, %d process%s)", result.n_pairs,
                    len(run), seconds, result.pairs_per_second, precision, processes, "es" if processes > 1 else "")
    return result


def _maw_layer_count(model) -> int:
    from maw_reranker.maw.patcher import maw_layers

    return len(maw_layers(model.model))
