"""`maw-rerank eval`: rerank a candidate pool with a cross-encoder (plain, MAW variant, or saved) and evaluate it."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
from maw_reranker.experiments.eval_run import EvalOptions, run_eval

HELP = ("Rerank a dataset's candidate pool (its candidates file, a TREC run, or its BM25 pool) to a depth with a "
        "cross-encoder, then write the run, metrics and artifacts under <output_dir>/<dataset>/<variant>/seed_<n>/. "
        "Without qrels only the reranked run (and scores) are written.")


class Options(EvalOptions):
    """All options of one evaluation run (see maw_reranker.experiments.eval_run.EvalOptions)."""


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(options: Options) -> int:
    outcome = run_eval(options)
    if outcome.status == "worker":
        return 0
    verb = "complete already (pass --force to redo)" if outcome.status == "skipped" else "wrote"
    print(f"{outcome.dataset} / {outcome.variant} / seed {outcome.seed}: {verb} {outcome.run_dir}")
    if outcome.info:
        info = outcome.info
        print(f"  {info['pairs']} pairs, {info['queries']} queries, {info['pairs_per_s']:.1f} pairs/s"
              + (f", {info['n_skipped_docs']} documents skipped" if info.get("n_skipped_docs") else ""))
    if outcome.metrics:
        shown = outcome.primary or list(outcome.metrics)
        print("  " + "  ".join(f"{m}={_fmt(outcome.metrics.get(m))}" for m in shown))
    elif outcome.metrics is None:
        print("  no qrels: reranked run written, no metrics")
    return 0
