"""Periodic dev evaluation: the dev candidates scored by the one scoring loop (``evaluate.rerank.score_pairs``)."""

from __future__ import annotations

import torch

from maw_reranker.data.dataset import fetch_texts
from maw_reranker.evaluate.metrics import evaluate_run
from maw_reranker.evaluate.rerank import score_pairs
from maw_reranker.train.sources import DevSet


def rerank_dev(encoder, dev: DevSet, batch_size: int = 64, precision: str = "fp32") -> dict[str, dict[str, float]]:
    texts = fetch_texts(dev.docs, (d for c in dev.candidates.values() for d in c))
    keys = [(qid, docid) for qid, docids in dev.candidates.items() for docid in docids]
    pairs = [(dev.queries[qid], texts[docid]) for qid, docid in keys]
    # fork_rng: evaluation must not advance the training RNG, or a resumed run (which may evaluate at a different
    # moment) would diverge from the uninterrupted one.
    with torch.random.fork_rng(devices=[]):
        scores = score_pairs(encoder, pairs, batch_size=batch_size, precision=precision)
    run: dict[str, dict[str, float]] = {}
    for (qid, docid), score in zip(keys, scores):
        run.setdefault(qid, {})[docid] = float(score)
    return run


def evaluate_dev(encoder, dev: DevSet, measure: str, batch_size: int = 64, precision: str = "fp32") -> tuple[float, dict]:
    """(value of ``measure``, all aggregates) of the reranked dev candidates."""
    run = rerank_dev(encoder, dev, batch_size, precision)
    result = evaluate_run(run, dev.qrels, [measure])
    return next(iter(result.aggregate.values())), dict(result.aggregate)
