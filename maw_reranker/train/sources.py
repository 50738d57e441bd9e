"""From options to training data: dataset, qrels, candidate pool (or official triples), checks, dev set.

Every problem that would otherwise surface mid-training (no qrels, no positives, queries without text, pool
documents missing from the corpus, nothing to sample negatives from) is raised here, before a model is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from maw_reranker.config.sections import candidates_from_options, dataset_from_options
from maw_reranker.data.dataset import fetch_texts
from maw_reranker.train.data import (PoolGroups, StreamingPoolGroups, TripleGroups, negative_window, positives_of,
                                     rank_candidates)
from maw_reranker.utils.errors import with_context
from maw_reranker.utils.text import preview

log = logging.getLogger(__name__)
SUBSET_SEED = 20240601  # fixed: max_queries/holdout subsets are a data choice, identical for every training seed


class TrainingDataError(ValueError):
    """The training data cannot be used as configured; the message names the problem and the data."""


@dataclass
class DevSet:
    """Dev queries with their candidates (best first) and qrels, for periodic evaluation."""

    name: str
    queries: dict[str, str]
    candidates: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]
    docs: Mapping[str, str]


@dataclass
class TrainingData:
    source: object
    queries: Mapping[str, str]
    docs: Mapping[str, str]
    description: dict = field(default_factory=dict)
    dev: Optional[DevSet] = None
    teacher: Optional[object] = None  # train.teacher.TeacherScores: a score column of an hf source, or load_teacher's


def subset_queries(qids, size: int) -> list[str]:
    """The fixed subset of ``size`` queries of ``qids`` (``max_queries``, ``holdout_queries``): a permutation by the
    constant ``SUBSET_SEED`` of the sorted ids, so every training seed and ``mine-negatives`` take the same one."""
    qids = sorted(qids)
    order = np.random.default_rng(SUBSET_SEED).permutation(len(qids))
    return [qids[i] for i in order[:size]]


def training_positives(qrels: Mapping, relevance_threshold: int, missing_positives: str, docs,
                       label: str) -> dict[str, list[str]]:
    """qid -> its positives (qrels grade >= ``relevance_threshold``), queries without one left out; with
    ``missing_positives: skip`` positives whose text is not in ``docs`` are dropped first. The base set that
    ``max_queries`` subsets, in ``train`` and in ``mine-negatives`` alike."""
    positives = {q: positives_of(j, relevance_threshold) for q, j in qrels.items()}
    positives = {q: p for q, p in positives.items() if p}
    if missing_positives == "skip":
        positives = _known_positives(positives, docs, label)
    return positives


def _known_positives(positives: dict, docs, label: str) -> dict:
    """Positives whose text is in the corpus (a candidates file holds only the retrieved texts); the rest dropped."""
    wanted = {d for p in positives.values() for d in p}
    found = set(fetch_texts(docs, wanted))
    kept = {q: [d for d in p if d in found] for q, p in positives.items()}
    dropped = len(wanted - found)
    if dropped:
        log.warning("%s: %d judged positives are not in the corpus and are left out (missing_positives: skip)",
                    label, dropped)
    return {q: p for q, p in kept.items() if p}


def _check_docs(docs, docids: set, what: str) -> None:
    found = fetch_texts(docs, docids)
    missing = set(docids) - set(found)
    if missing:
        hint = "; set missing_positives: skip to leave them out" if what.startswith("positive") else ""
        raise TrainingDataError(f"{len(missing)} {what} missing from the corpus: {preview(missing)}{hint}")


def load_training_data(opts, main_first=None) -> TrainingData:
    """Build and check the training groups (and the dev set) described by ``opts`` (a TrainOptions)."""
    import contextlib

    main_first = main_first or contextlib.nullcontext
    if opts.source == "hf":
        from maw_reranker.train.hf_source import load_hf_training

        return load_hf_training(opts, main_first)
    ds = dataset_from_options(opts)
    label = f"training set {ds.name}" + (f" (split {ds.split})" if ds.split else "")
    qrels = ds.qrels()
    if not qrels:
        raise TrainingDataError(f"{label} has no qrels (relevance judgments): nothing to train on")
    queries = ds.queries()
    if not queries:
        raise TrainingDataError(f"{label} has no queries")
    docs = ds.docs()
    positives = training_positives(qrels, opts.relevance_threshold, opts.missing_positives, docs, label)
    if not positives:
        raise TrainingDataError(f"{label}: no query has a positive (a qrels grade >= relevance_threshold="
                                f"{opts.relevance_threshold}); check the threshold or the qrels")
    without = sorted(set(queries) - set(positives))
    if without and not opts.allow_missing_positives:
        raise TrainingDataError(f"{label}: {len(without)} queries have no positive (grade >= "
                                f"{opts.relevance_threshold}): {preview(without)}; set allow_missing_positives: true "
                                "to skip them")
    no_text = sorted(set(positives) - set(queries))
    if no_text:
        raise TrainingDataError(f"{label}: {len(no_text)} judged queries have no query text: {preview(no_text)}")
    description = {"dataset": ds.name, "split": ds.split, "source": opts.source,
                   "queries_with_positive": len(positives), "queries_without_positive": len(without)}
    if without:
        log.warning("%s: %d queries without a positive are skipped (e.g. %s)", label, len(without), preview(without))
    train_qids = set(positives)
    if opts.max_queries is not None:
        train_qids = set(subset_queries(train_qids, opts.max_queries))
    holdout: list[str] = []
    if opts.holdout_queries:
        if opts.holdout_queries >= len(train_qids):
            raise TrainingDataError(f"holdout_queries={opts.holdout_queries} leaves no training query "
                                    f"({len(train_qids)} available)")
        holdout = subset_queries(train_qids, opts.holdout_queries)
        train_qids -= set(holdout)
    if opts.source == "triples":
        if not ds.irds.has_docpairs():
            raise TrainingDataError(f"{label} has no docpairs (official triples); use source: pool")
        keep = train_qids
        pairs = lambda: (p for p in ds.irds.docpairs_iter() if p.query_id in keep)  # noqa: E731
        source = TripleGroups(pairs, qrels, seed=opts.seed, buffer=opts.shuffle_buffer)
        description["negatives"] = f"{ds.irds_id} docpairs"
        return TrainingData(source, queries, docs, description, _dev_set(opts, main_first))
    candidates = candidates_from_options(opts, ds, streaming=opts.streaming, guard=main_first)
    run, rows, where = candidates.run, candidates.rows, candidates.description
    description.update(negatives=where, rank_window=[opts.neg_rank_min, opts.neg_rank_max],
                       sampling=opts.sampling_strategy, num_negatives=opts.num_negatives,
                       max_negative_grade=opts.max_negative_grade)
    if rows is not None:
        source = StreamingPoolGroups(rows, qrels, opts.num_negatives, opts.neg_rank_min, opts.neg_rank_max,
                                     opts.relevance_threshold, opts.sampling_strategy, opts.seed, opts.shuffle_buffer,
                                     include=train_qids, max_negative_grade=opts.max_negative_grade)
        return TrainingData(source, queries, docs, description, _dev_set(opts, main_first))
    ranked = {q: rank_candidates(run.get(q, {})) for q in train_qids | set(holdout)}
    windows = {q: negative_window(ranked[q], qrels[q], opts.neg_rank_min, opts.neg_rank_max, opts.max_negative_grade)
               for q in train_qids}
    no_neg = sorted(q for q in train_qids if not windows[q])
    if len(no_neg) == len(train_qids):
        raise TrainingDataError(f"{label}: no query has a non-relevant candidate at ranks {opts.neg_rank_min}-"
                                f"{opts.neg_rank_max} of {where}: nothing to sample negatives from")
    if no_neg:
        log.warning("%s: %d queries have no negative candidate in ranks %d-%d and are skipped (e.g. %s)", label,
                    len(no_neg), opts.neg_rank_min, opts.neg_rank_max, preview(no_neg))
    short = sum(1 for q in train_qids if 0 < len(windows[q]) < opts.num_negatives)
    if short:
        log.warning("%d queries have fewer than %d negative candidates; their negatives repeat", short,
                    opts.num_negatives)
    _check_docs(docs, {d for q in train_qids for d in positives[q]}, "positive documents of the qrels")
    _check_docs(docs, {d for w in windows.values() for d in w}, f"negative candidates of {where}")
    train_pos = {q: positives[q] for q in train_qids}
    source = PoolGroups(train_pos, windows, opts.num_negatives, opts.sampling_strategy, opts.seed)
    description.update(training_queries=sum(1 for q in train_qids if windows[q]), groups_per_epoch=len(source),
                       queries_without_negatives=len(no_neg), short_windows=short, holdout_queries=len(holdout))
    dev = None
    if holdout:
        cands = {q: ranked[q][:opts.dev_depth] for q in holdout}
        _check_docs(docs, {d for c in cands.values() for d in c}, f"dev candidates of {where}")
        dev = DevSet(f"{ds.name} holdout", {q: queries[q] for q in holdout}, cands,
                     {q: qrels[q] for q in holdout}, docs)
    return TrainingData(source, queries, docs, description, dev or _dev_set(opts, main_first))


def _dev_set(opts, main_first) -> Optional[DevSet]:
    if not opts.dev_dataset:
        return None
    from maw_reranker.data import load_dataset
    from maw_reranker.retrieve.candidates import resolve_candidates

    try:
        ds = load_dataset(opts.dev_dataset, opts.dev_split, queries=opts.dev_queries, qrels=opts.dev_qrels,
                          qrels_duplicates=opts.qrels_duplicates)
    except (ValueError, FileNotFoundError) as exc:
        raise with_context(exc, "option 'dev_dataset'") from None
    qrels = ds.qrels()
    if not qrels:
        raise TrainingDataError(f"dev set {ds.name} has no qrels: it cannot select a checkpoint")
    run = resolve_candidates(ds, opts.dev_run, engine=opts.pool_engine, k=max(opts.dev_depth, opts.pool_k),
                             pools_dir=opts.pools_dir, guard=main_first).run
    queries = ds.queries()
    qids = sorted(q for q in qrels if q in run and q in queries)
    if opts.dev_max_queries is not None:
        qids = qids[:opts.dev_max_queries]
    if not qids:
        raise TrainingDataError(f"dev set {ds.name}: no judged query has candidates")
    cands = {q: rank_candidates(run[q])[:opts.dev_depth] for q in qids}
    docs = ds.docs()
    _check_docs(docs, {d for c in cands.values() for d in c}, f"dev candidates of {ds.name}")
    return DevSet(ds.name, {q: queries[q] for q in qids}, cands, {q: qrels[q] for q in qids}, docs)
