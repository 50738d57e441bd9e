"""`maw-rerank study`: train every variant x seed per protocol, evaluate them as suites, write the report."""

from maw_reranker.experiments.study import StudyOptions, apply_quick, plan_trainings, run_study, suite_for

HELP = ("Run a training study (configs/studies/*.yaml): per protocol, train every variant for every seed (complete "
        "trainings are reused), evaluate them as a suite against the baseline, and write a report with parameter "
        "counts and training times. --quick-run for a smoke run, --dry-run to list the plan.")


class Options(StudyOptions):
    """All options of a study (see maw_reranker.experiments.study.StudyOptions)."""


def run(options: Options) -> int:
    if options.dry_run:
        shown = apply_quick(options) if options.quick_run else options
        trainings = plan_trainings(shown)
        for t in trainings:
            state = "complete" if t.done else "to train"
            rank = f", lora_r matched to {t.match}" if t.match else ""
            print(f"train\t{t.protocol}\t{t.variant}\tseed {t.seed}\t{t.options.output_dir}\t{state}{rank}")
        for protocol in shown.protocols:
            if not shown.only or protocol["name"] in shown.only:
                suite = suite_for(shown, protocol)
                print(f"eval\t{protocol['name']}\tsuite {suite.name}: {len(suite.variants)} variants x "
                      f"{len(suite.seeds)} seeds on {protocol['test'].get('dataset')}"
                      + (f" (untouched checkpoint {shown.untouched!r}: once)" if shown.untouched else ""))
        print(f"{len(trainings)} trainings planned ({sum(t.done for t in trainings)} complete already)")
        return 0
    result = run_study(options)
    print(f"report: {result.report}")
    return 0
