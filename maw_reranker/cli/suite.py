"""`maw-rerank suite`: variants x seeds x datasets from YAML (see ``maw_reranker.experiments.suite``)."""

from maw_reranker.experiments.eval_run import plan_eval
from maw_reranker.experiments.suite import SuiteOptions, expand, plan, run_suite

HELP = ("Run a suite (variants x seeds x datasets) from YAML; complete runs are skipped; per-dataset summaries + "
        "plots. --config takes a file or a packaged suite name (main, ablations, learned, ...).")


class Options(SuiteOptions):
    """All options of a suite (see maw_reranker.experiments.suite.SuiteOptions)."""


def dry_run(options: Options) -> int:
    """List the runs; each is also planned, and one whose model or data is missing here is marked, not fatal."""
    runs = expand(options)
    not_ready = 0
    for o in runs:
        try:
            plan_eval(o)
            status = ""
        except (ValueError, OSError) as exc:
            not_ready += 1
            status = f"\tNOT READY: {exc}"
        print(f"{o.dataset}\t{o.variant}\tseed {o.seed}\tmodel {o.model}\tmaw {o.maw}{status}")
    print(f"{len(runs)} runs planned" + (f", {not_ready} not ready here (model or data missing: see above)"
                                         if not_ready else ""))
    return 0


def run(options: Options) -> int:
    if options.dry_run:
        return dry_run(options)
    runs = plan(options)
    outcome = run_suite(runs, options.baseline, name=options.name, summary_measures=options.summary_measures,
                        plots=options.plots, n_resamples=options.n_resamples, alpha=options.alpha)
    done = [o for o in outcome.runs if o.status == "done"]
    skipped = [o for o in outcome.runs if o.status == "skipped"]
    if not done and not skipped:  # a non-main Accelerate process
        return 0
    for o in outcome.runs:
        shown = ", ".join(f"{m}={o.metrics[m]:.4f}" for m in o.primary if o.metrics and m in o.metrics)
        print(f"{o.status:8s} {o.dataset}/{o.variant}/seed_{o.seed}  {shown}")
    print(f"{len(done)} runs done, {len(skipped)} complete already")
    for dataset, folder in outcome.summaries.items():
        print(f"summary {dataset}: {folder / 'summary.md' if folder else 'none (no qrels)'}")
    return 0
