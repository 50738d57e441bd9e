"""`maw-rerank suite`: variants x seeds x datasets from YAML (see ``maw_reranker.experiments.suite``)."""

from maw_reranker.experiments.suite import SuiteOptions, plan, run_suite

HELP = ("Run a suite (variants x seeds x datasets) from YAML; complete runs are skipped; per-dataset summaries + "
        "plots. --config takes a file or a packaged suite name (main, ablations, learned, ...).")


class Options(SuiteOptions):
    """All options of a suite (see maw_reranker.experiments.suite.SuiteOptions)."""


def run(options: Options) -> int:
    runs = plan(options)
    if options.dry_run:
        for r in runs:
            o = r.options
            print(f"{o.dataset}\t{r.variant}\tseed {o.seed}\tmodel {o.model}\tmaw {o.maw}")
        print(f"{len(runs)} runs planned")
        return 0
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
