"""`maw-rerank mine-negatives`: hard negatives mined into a TREC run (plus a JSON sidecar) for `train --candidates`."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
from dataclasses import dataclass

from maw_reranker.train.mining import MineOptions, mine_negatives

HELP = ("Mine hard negatives for a training set into a reusable TREC run: per query with a positive, candidates of "
        "its BM25 pool (or rescored by a cross-encoder, --miner cross-encoder --model ...) at ranks neg_rank_min-neg_rank_max, "
        "judged documents and likely false negatives (--margin, --relative-margin) left out, at most num_negatives "
        "kept. Train on it with `maw-rerank train --candidates <output_run>`.")


@dataclass
class Options(MineOptions):
    pass


def run(options: Options) -> int:
    result = mine_negatives(options)
    counts = result.counts
    skipped = ", ".join(f"{reason} {n}" for reason, n in counts["skipped"].items() if n) or "none"
    print(f"{result.output}: {counts['negatives']} negatives for {counts['queries_mined']} of "
          f"{counts['queries_with_positive']} queries ({counts['queries_without_negatives']} left without, "
          f"{counts['queries_not_in_candidates']} not in the candidates); skipped: {skipped}")
    print(f"settings and inputs: {result.sidecar}")
    return 0
