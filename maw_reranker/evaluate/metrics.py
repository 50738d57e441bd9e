"""Retrieval metrics as a thin layer over ir_measures (no hand-written metrics), keeping per-query values.

Query-set policy, stated because it silently changes numbers when left implicit:

* run queries without qrels are skipped (they cannot be scored) and logged by count and id;
* qrels queries absent from the run are, by default, left out and logged ("intersection", trec_eval's default);
  with ``missing_queries="zero"`` they count as 0 for every measure (trec_eval ``-c``);
* a query present in the run with an empty ranking is scored (it retrieved nothing: 0 for the usual measures),
  with a warning;
* an empty run, or no query in common with the qrels, is an error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import ir_measures

from maw_reranker.utils.text import preview
from maw_reranker.data.measures import MetricError, check_measures, measure_names, parse_measures

__all__ = ["EvalResult", "MetricError", "check_measures", "evaluate_run", "measure_names", "parse_measures",
           "standard_measures"]

logger = logging.getLogger(__name__)

STANDARD_CUTOFFS = (1, 5, 10, 100, 1000)
MissingPolicy = Literal["skip", "zero"]


@dataclass
class EvalResult:
    """Aggregate and per-query values, keyed by the canonical ir_measures name (e.g. ``"nDCG@10"``)."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    # Bookkeeping so reports can say exactly which queries the numbers cover.
    n_queries: int = 0
    skipped_unjudged: list[str] = field(default_factory=list)
    missing_from_run: list[str] = field(default_factory=list)
    missing_queries: str = "skip"

    @property
    def measures(self) -> list[str]:
        return list(self.aggregate)

    def to_dict(self) -> dict:
        return {
            "aggregate": self.aggregate,
            "per_query": self.per_query,
            "n_queries": self.n_queries,
            "skipped_unjudged": self.skipped_unjudged,
            "missing_from_run": self.missing_from_run,
            "missing_queries": self.missing_queries,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalResult":
        return cls(
            aggregate=dict(data["aggregate"]),
            per_query={m: dict(v) for m, v in data["per_query"].items()},
            n_queries=int(data.get("n_queries", 0)),
            skipped_unjudged=list(data.get("skipped_unjudged", [])),
            missing_from_run=list(data.get("missing_from_run", [])),
            missing_queries=data.get("missing_queries", "skip"),
        )


def standard_measures() -> list[str]:
    """The original study's extra set: Success (hit rate), RR and nDCG at k in {1, 5, 10, 100, 1000}."""
    return [f"{name}@{k}" for name in ("Success", "RR", "nDCG") for k in STANDARD_CUTOFFS]


def _clean_run(run: Mapping) -> dict[str, dict[str, float]]:
    clean: dict[str, dict[str, float]] = {}
    for qid, docs in run.items():
        ranking = {}
        for docid, score in docs.items():
            value = float(score)
            # NaN scores have no order; trec_eval would rank them arbitrarily, so refuse.
            if not math.isfinite(value):
                raise MetricError(f"non-finite score {score!r} for query {qid!r}, document {docid!r}")
            ranking[str(docid)] = value
        clean[str(qid)] = ranking
    return clean


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Iterable,
    missing_queries: MissingPolicy = "skip",
) -> EvalResult:
    """Score ``run`` against ``qrels`` with ir_measures; see the module docstring for the query-set policy."""
    if missing_queries not in ("skip", "zero"):
        raise MetricError(f"missing_queries must be 'skip' or 'zero', got {missing_queries!r}")
    parsed = parse_measures(measures)
    run = _clean_run(run)
    qrels = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    if not run:
        raise MetricError("the run is empty: no queries to evaluate")
    if not qrels:
        raise MetricError("the qrels are empty: nothing to evaluate against")

    unjudged = sorted(q for q in run if q not in qrels)
    if unjudged:
        logger.warning("skipping %d run queries without qrels: %s", len(unjudged), preview(unjudged))
    missing = sorted(q for q in qrels if q not in run)
    if missing:
        if missing_queries == "zero":
            logger.warning("%d qrels queries are absent from the run and count as 0: %s", len(missing), preview(missing))
        else:
            logger.warning(
                "%d qrels queries are absent from the run and are left out (evaluating over the %d judged run queries; "
                "pass missing_queries='zero' to count them as 0): %s",
                len(missing), len(run) - len(unjudged), preview(missing),
            )
    common = sorted(q for q in run if q in qrels)
    if not common:
        raise MetricError(
            f"no query of the run has qrels (run queries e.g. {preview(sorted(run), 5)}; "
            f"qrels queries e.g. {preview(sorted(qrels), 5)}): mismatched ids?"
        )
    empty = [q for q in common if not run[q]]
    if empty:
        logger.warning("%d judged queries have an empty ranking and score 0: %s", len(empty), preview(empty))

    sub_run = {q: run[q] for q in common if run[q]}
    sub_qrels = {q: qrels[q] for q in common}
    per_query: dict[str, dict[str, float]] = {str(m): {} for m in parsed}
    if sub_run:
        for metric in ir_measures.iter_calc(parsed, sub_qrels, sub_run):
            per_query[str(metric.measure)][metric.query_id] = float(metric.value)
    # Explicit zeros rather than relying on a provider's fill-in behaviour, which differs between providers.
    zero_ids = empty + (missing if missing_queries == "zero" else [])
    for name in per_query:
        for qid in zero_ids:
            per_query[name].setdefault(qid, 0.0)
        per_query[name] = dict(sorted(per_query[name].items()))

    expected = set(common) | (set(missing) if missing_queries == "zero" else set())
    aggregate: dict[str, float] = {}
    for measure in parsed:
        values = per_query[str(measure)]
        if set(values) != expected:
            lacking = sorted(expected - set(values))
            logger.warning("ir_measures returned no %s value for %d queries: %s", measure, len(lacking), preview(lacking))
        agg = measure.aggregator()  # the measure's own aggregation (mean for most, sum for NumRet etc.)
        for value in values.values():
            agg.add(value)
        aggregate[str(measure)] = float(agg.result())
    return EvalResult(
        aggregate=aggregate,
        per_query=per_query,
        n_queries=len(expected),
        skipped_unjudged=unjudged,
        missing_from_run=missing,
        missing_queries=missing_queries,
    )
