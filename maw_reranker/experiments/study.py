"""A training study: for each protocol (train set -> test set), train every variant for every seed, then evaluate
them all as one suite (significance against the baseline variant) and write a report with the trainable
parameter counts and the training time of every run.

A study file (``configs/studies/*.yaml``) holds ``model``, ``seeds``, ``baseline``, ``train`` (training options
shared by every run), ``eval`` (evaluation options shared by every run), ``protocols`` (each ``{name, train:
{dataset options...}, test: {dataset options...}}``), ``variants`` (each ``{name, train: {options}}``) and
``quick`` (overrides for ``--quick``: fewer seeds, steps, queries; its models and evaluation runs go to
folders of their own, ``<study>-quick`` and ``<output_dir>/_quick``). A variant may set ``lora_r: match:<variant>``:
the LoRA rank whose parameter count is closest to that (earlier) variant's trainable MAW parameters.
``untouched: <name>`` adds an evaluation-only variant of that name: ``model`` itself, untrained and without MAW,
evaluated once (its first seed: it has nothing random); every trained variant is then also compared against it
(a second summary per protocol, ``<study>-<protocol>-vs-<name>``), or ``baseline`` names it and the one summary is
against it.

Trained models go to ``<models_dir>/<study>/<protocol>/<variant>/seed_<n>/`` and are reused when complete
(``train_summary.json`` is written last), evaluation runs to ``<output_dir>/`` as for any suite, so an interrupted
study continues where it stopped.

``time_budget_s`` is a time guard: once that many seconds have passed since the study started, no further training
starts (nor one that, by the time the same variant, else any, took before in this call, would not end in time), and
a training under way stops at its next step but its last (its work since its latest checkpoint is lost: it resumes from that checkpoint on
the next call). The trainings complete by then are evaluated and the report covers them, marked partial; the next
call continues (complete trainings and evaluation runs are reused). ``run_order: seed`` trains every variant of
every protocol with the first seed before the second seed starts, so that a partial study has every variant.
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from maw_reranker.config.files import ConfigError, deep_merge
from maw_reranker.config.parser import parse_options
from maw_reranker.config.sections import opt

logger = logging.getLogger(__name__)
MATCH = "match:"
# Training options that change how a run is executed or logged, not the model it produces.
EXECUTION_KEYS = frozenset({"progress", "report_to", "resume", "force", "log_every", "checkpoint_every",
                            "keep_checkpoints", "prefix_cache", "dev_batch_size", "output_dir"})


@dataclass
class StudyOptions:
    CONFIG_KINDS = ("studies",)
    RENAMED = {"out_dir": "use 'output_dir'", "runs_dir": "use 'models_dir' (the trained models' folder)"}

    name: str = opt("study", "study name: names its runs folder and its suites")
    model: str = opt("", "the cross-encoder every variant starts from (hub id or directory)")
    seeds: list[int] = opt([0, 1, 2], "training (and evaluation) seeds of every variant")
    baseline: str = opt("", "the variant every other is compared against (a trained variant or `untouched`)")
    untouched: str = opt("", "name of an evaluation-only variant: `model` untrained and without MAW; every variant "
                             "is also compared against it (empty: none)")
    train: dict = opt({}, "training options shared by every run (see `maw-rerank train --help`)")
    eval: dict = opt({}, "evaluation options shared by every run (see `maw-rerank eval --help`)")
    protocols: list = opt([], "protocols: {name, train: {dataset options}, test: {dataset options}}")
    variants: list = opt([], "variants: {name, train: {training options}}; lora_r: match:<variant> matches the "
                             "trainable MAW parameters of that variant")
    quick: dict = opt({}, "overrides applied with --quick (a smoke run of the whole study)")
    models_dir: str = opt("runs", "trained models go to <models_dir>/<name>/<protocol>/<variant>/seed_<n>/")
    output_dir: str = opt("experiments", "evaluation runs and summaries (as for suites)")
    n_resamples: int = opt(10_000, "bootstrap resamples for the CI")
    alpha: float = opt(0.05, "Holm-adjusted significance level")
    quick_run: bool = opt(False, "apply the `quick` overrides (a smoke run; its results are not the study's)")
    dry_run: bool = opt(False, "list the planned trainings and evaluations and exit")
    only: Optional[list[str]] = opt(None, "run only these protocols (names)")
    time_budget_s: Optional[float] = opt(None, "time guard: no training starts, and one under way stops at its next "
                                               "step, once this many seconds have passed since the study started; "
                                               "the complete ones are evaluated, the report is marked partial, the "
                                               "next call continues (empty: no guard)")
    run_order: str = opt("protocol", "order of the trainings: protocol (protocol, variant, seed) or seed (seed, "
                                     "then protocol and variant: every variant once before the next seed)")

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise ValueError("option 'name' is empty")
        if self.n_resamples < 1:
            raise ValueError(f"option 'n_resamples' must be >= 1, got {self.n_resamples}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"option 'alpha' must be in (0, 1), got {self.alpha}")
        if self.time_budget_s is not None and self.time_budget_s < 0:
            raise ValueError(f"option 'time_budget_s' must be >= 0, got {self.time_budget_s}")
        if self.run_order not in ("protocol", "seed"):
            raise ValueError(f"option 'run_order' must be 'protocol' or 'seed', got {self.run_order!r}")
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(self.quick or {}) - fields)
        if unknown:
            raise ValueError(f"option 'quick' has unknown keys {unknown}; allowed: the study's own options")


@dataclass
class TrainingRun:
    protocol: str
    variant: str
    seed: int
    options: object  # TrainOptions
    match: Optional[str] = None  # the variant whose MAW parameter count the LoRA rank matches

    @property
    def done(self) -> bool:
        return (Path(self.options.output_dir) / "train_summary.json").is_file()

    @property
    def started(self) -> bool:
        """Checkpoints of an interrupted training: it resumes from the latest."""
        from maw_reranker.train.checkpoints import complete_checkpoints

        return not self.done and bool(complete_checkpoints(self.options.output_dir))

    def check_same_settings(self) -> None:
        """A complete training is reused only when it was made with the same settings (else: an error)."""
        path = Path(self.options.output_dir) / "train_config.json"
        if not self.done or not path.is_file():
            return
        saved = json.loads(path.read_text(encoding="utf-8")).get("options", {})
        ignored = EXECUTION_KEYS | ({"lora_r"} if self.match else set())
        now = json.loads(json.dumps(self.options.to_dict(), default=str))
        differing = sorted(k for k in set(saved) | set(now) if k not in ignored and saved.get(k) != now.get(k))
        if differing:
            raise ConfigError(f"{self.options.output_dir} holds a training of this study made with other settings "
                              f"(differing: {', '.join(differing)}); remove it, or give the study another name")


@dataclass
class StudyResult:
    report: Path
    trainings: list = field(default_factory=list)
    summaries: dict = field(default_factory=dict)
    untouched: dict = field(default_factory=dict)  # protocol -> {dataset: summary folder} against the untouched model
    partial: bool = False  # the time guard stopped it: the report covers the complete trainings only


class StudyDeadline(Exception):
    """Raised inside a training when the study's time guard expires (caught by :func:`run_study`)."""


def apply_quick(options: StudyOptions) -> StudyOptions:
    """The study with its ``quick`` overrides merged in (mappings merge key by key)."""
    from dataclasses import asdict

    data = deep_merge({k: v for k, v in asdict(options).items()}, dict(options.quick or {}))
    data["quick"] = {}
    if "name" not in (options.quick or {}):  # its own models and runs: a smoke run is never reused as the study
        data["name"] = f"{options.name}-quick"
    if "output_dir" not in (options.quick or {}):  # its own evaluation runs: they never block the study's
        data["output_dir"] = str(Path(options.output_dir) / "_quick")
    return StudyOptions(**data)


def _names(entries: list, what: str) -> list[str]:
    names = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"study: {what} #{i + 1} must be a mapping with a 'name'")
        names.append(str(entry["name"]))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"study: duplicate {what} names {dupes}")
    return names


def _check_sides(protocol: dict) -> None:
    """A protocol's ``test`` is a mapping of dataset options (its test set); its ``train``, when given, one too."""
    for side in ("train", "test"):
        value = protocol.get(side)
        if (value is None and side == "test") or (value is not None and not isinstance(value, dict)):
            raise ConfigError(f"study protocol {protocol['name']!r}: option '{side}' must be a mapping of dataset "
                              f"options (its {side} set, e.g. {side}: {{dataset: scifact}}), got {value!r}")


def plan_trainings(options: StudyOptions) -> list[TrainingRun]:
    """Every training of the study as checked ``TrainOptions`` (protocol-major, then variant, then seed)."""
    from maw_reranker.train.config import TrainOptions

    if not str(options.model).strip():
        raise ConfigError("study: option 'model' is empty")
    protocols = _names(options.protocols, "protocol")
    for protocol in options.protocols:
        _check_sides(protocol)
    variants = _names(options.variants, "variant")
    if options.untouched and options.untouched in variants:
        raise ConfigError(f"study: untouched {options.untouched!r} is also the name of a trained variant; give it "
                          "another name")
    if options.baseline not in variants + ([options.untouched] if options.untouched else []):
        raise ConfigError(f"study: baseline {options.baseline!r} is not one of the variants {variants}"
                          + (f" nor untouched {options.untouched!r}" if options.untouched else ""))
    if options.only:
        unknown = sorted(set(options.only) - set(protocols))
        if unknown:
            raise ConfigError(f"study: option 'only' names unknown protocols {unknown}; known: {protocols}")
    runs = []
    for protocol in options.protocols:
        if options.only and protocol["name"] not in options.only:
            continue
        for v_index, variant in enumerate(options.variants):
            spec = deep_merge(deep_merge(dict(options.train or {}), dict(protocol.get("train") or {})),
                              dict(variant.get("train") or {}))
            match = None
            if isinstance(spec.get("lora_r"), str) and spec["lora_r"].startswith(MATCH):
                match = spec["lora_r"][len(MATCH):]
                if match not in variants[:v_index]:
                    raise ConfigError(f"study variant {variant['name']!r}: lora_r {spec['lora_r']!r} must name an "
                                      f"earlier variant ({variants[:v_index]})")
                spec["lora_r"] = 1  # replaced by the matched rank before training
            for seed in options.seeds:
                out = Path(options.models_dir) / options.name / protocol["name"] / variant["name"] / f"seed_{seed}"
                values = {"model": options.model, **spec, "seed": seed, "output_dir": str(out)}
                where = f"study protocol {protocol['name']!r}, variant {variant['name']!r}"
                try:
                    train_options = parse_options(TrainOptions, values, source=f"study {options.name!r}").validate()
                except (ValueError, FileNotFoundError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                runs.append(TrainingRun(protocol["name"], variant["name"], seed, train_options, match))
    if options.run_order == "seed":  # stable: protocol and variant order kept within a seed (match: earlier variant)
        order = {seed: i for i, seed in enumerate(options.seeds)}
        runs.sort(key=lambda r: order[r.seed])
    from maw_reranker.experiments.suite import expand

    for protocol in options.protocols:  # the evaluation side is checked too, before any training starts
        if not options.only or protocol["name"] in options.only:
            try:
                expand(suite_for(options, protocol))
            except ValueError as exc:
                raise ConfigError(f"study protocol {protocol['name']!r}, evaluation: {exc}") from None
    return runs


def suite_for(options: StudyOptions, protocol: dict):
    """The evaluation suite of one protocol: every trained variant and seed on its test set."""
    from maw_reranker.experiments.suite import SuiteOptions

    root = Path(options.models_dir) / options.name / protocol["name"]
    variants = [{"name": v["name"], "model": str(root / "{variant}" / "seed_{seed}" / "final"), "maw": "auto"}
                for v in options.variants]
    if options.untouched:  # the checkpoint every variant starts from, as it is
        variants.append({"name": options.untouched, "model": options.model, "maw": None})
    overrides = dict(options.eval or {})
    if options.train.get("max_length") and "max_length" not in overrides:
        overrides["max_length"] = options.train["max_length"]
    return SuiteOptions(name=f"{options.name}-{protocol['name']}", datasets=[dict(protocol["test"])],
                        variants=variants, seeds=list(options.seeds), baseline=options.baseline,
                        overrides=overrides, output_dir=options.output_dir, n_resamples=options.n_resamples,
                        alpha=options.alpha)


def suite_runs(options: StudyOptions, protocol: dict) -> list:
    """The evaluation runs of one protocol's suite; the untouched checkpoint once (its first seed)."""
    from maw_reranker.experiments.suite import expand

    first = list(options.seeds)[0]
    return [r for r in expand(suite_for(options, protocol))
            if not (options.untouched and r.variant == options.untouched and r.seed != first)]


def against_untouched(options: StudyOptions, protocol: dict, outcome) -> dict:
    """Every variant of a protocol's evaluated suite against the untouched checkpoint: dataset -> summary folder."""
    from maw_reranker.experiments.suite import summarize_dataset
    from maw_reranker.utils.text import slugify

    by_dataset: dict = {}
    for out in outcome.runs:
        entry = by_dataset.setdefault(out.run_dir.parent.parent, {"seeds": {}, "primary": out.primary})
        entry["seeds"].setdefault(out.variant, []).append(str(out.seed))
    name = f"{suite_for(options, protocol).name}-vs-{options.untouched}"
    folders = {}
    for dataset_dir, entry in by_dataset.items():
        folder = dataset_dir / "_suites" / slugify(name)
        summary = summarize_dataset(dataset_dir, entry["seeds"], options.untouched, entry["primary"], folder,
                                    plots=False, n_resamples=options.n_resamples, alpha=options.alpha)
        folders[dataset_dir.name] = folder if summary is not None else None
    return folders


def _test_options(options: StudyOptions, protocol: dict):
    """The evaluation options of a protocol's test set (as its suite builds them)."""
    from maw_reranker.experiments.suite import expand

    return expand(suite_for(options, protocol))[0]


def _matched_rank(run: TrainingRun, trainings: list[TrainingRun]) -> int:
    """The LoRA rank closest to the trainable MAW parameter count of the matched variant (same protocol, seed)."""
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.config.sections import resolve_model_path
    from maw_reranker.train.lora import rank_for_budget
    from maw_reranker.cross_encoder.prefix import top_layer_indices

    source = next(t for t in trainings if (t.protocol, t.variant, t.seed) == (run.protocol, run.match, run.seed))
    summary = json.loads((Path(source.options.output_dir) / "train_summary.json").read_text(encoding="utf-8"))
    target = int(summary["parameters"]["maw"])
    if target < 1:
        raise ConfigError(f"study variant {run.variant!r}: lora_r match:{run.match} names a variant without trainable "
                          "MAW parameters")
    encoder = CrossEncoderWithMAW.from_pretrained(resolve_model_path(run.options.model), maw=None, device="cpu")
    top = run.options.lora_layers == "top" or run.options.top_lora
    layers = top_layer_indices(encoder.model, run.options.top_layers) if top else None
    return rank_for_budget(encoder.model, target, run.options.lora_target_modules, layers)


def run_study(options: StudyOptions) -> StudyResult:
    """Train (or reuse) every run, evaluate each protocol as a suite, write the report."""
    from maw_reranker.config.sections import dataset_from_options
    from maw_reranker.experiments.suite import plan_runs, run_suite
    from maw_reranker.train.trainer import train

    started = time.perf_counter()  # the time guard counts planning and loading the test sets too
    if options.quick_run:
        options = apply_quick(options)
    trainings = plan_trainings(options)
    for run in trainings:
        run.check_same_settings()
    for protocol in options.protocols:  # test sets readable before hours of training
        if not options.only or protocol["name"] in options.only:
            dataset_from_options(_test_options(options, protocol))
    budget = options.time_budget_s
    trained: set = set()  # models (re)trained now: their evaluations are redone
    took: dict = {}  # variant -> the longest of its trainings in this call (s): whether another one fits the budget
    partial = False

    def guard_for(run: TrainingRun):
        total: list = []  # the training's step count, from its train_config.json (written before its first step)

        def guard(step, row):  # a training callback: the time guard inside a training
            if not total:
                config = Path(run.options.output_dir) / "train_config.json"
                total.append(json.loads(config.read_text(encoding="utf-8")).get("total_steps"))
            if step != total[0] and time.perf_counter() - started >= budget:  # the last step: it saves
                raise StudyDeadline(f"time budget of {budget:g} s spent at step {step}")

        return guard

    for i, run in enumerate(trainings, 1):
        if run.done:
            logger.info("study: training %d/%d complete already: %s", i, len(trainings), run.options.output_dir)
            continue
        if budget is not None:
            spent = time.perf_counter() - started
            # the estimate: this variant's longest training in this call, else the longest of any
            estimate = took.get(run.variant, max(took.values(), default=0.0))
            if spent >= budget or spent + estimate > budget:
                logger.warning("study: time budget (%g s): stopping after %.0f s, before training %d/%d (%s / %s / "
                               "seed %d); the report covers the complete trainings", budget, spent, i, len(trainings),
                               run.protocol, run.variant, run.seed)
                partial = True
                break
        if run.match:
            run.options = dataclasses.replace(run.options, lora_r=_matched_rank(run, trainings))
        if run.started:  # interrupted: continue where it stopped
            run.options = dataclasses.replace(run.options, resume="latest")
        logger.info("study: training %d/%d: %s / %s / seed %d", i, len(trainings), run.protocol, run.variant, run.seed)
        t0 = time.perf_counter()
        try:
            train(run.options, callbacks=[guard_for(run)] if budget is not None else None)
        except StudyDeadline as stop:
            logger.warning("study: %s of training %d/%d (%s / %s / seed %d): it resumes from its latest checkpoint, if any, "
                           "on the next call", stop, i, len(trainings), run.protocol, run.variant, run.seed)
            partial = True
            break
        took[run.variant] = max(took.get(run.variant, 0.0), time.perf_counter() - t0)
        trained.add((run.protocol, run.variant, run.seed))
    result = StudyResult(Path(options.output_dir) / "_studies" / options.name / "report.md", trainings,
                         partial=partial or not all(t.done for t in trainings))
    vs_untouched = bool(options.untouched) and options.baseline != options.untouched
    for protocol in options.protocols:
        if options.only and protocol["name"] not in options.only:
            continue
        suite_options = suite_for(options, protocol)
        complete = {(t.variant, t.seed) for t in trainings if t.protocol == protocol["name"] and t.done}
        runs = [dataclasses.replace(r, force=True) if (protocol["name"], r.variant, r.seed) in trained else r
                for r in suite_runs(options, protocol)
                if r.variant == options.untouched or (r.variant, r.seed) in complete]  # partial: the complete ones
        outcome = run_suite(plan_runs(runs), options.baseline, name=suite_options.name,
                            n_resamples=options.n_resamples, alpha=options.alpha)
        result.summaries[protocol["name"]] = outcome.summaries
        if vs_untouched:
            result.untouched[protocol["name"]] = against_untouched(options, protocol, outcome)
        write_report(options, result, time.perf_counter() - started)  # after each protocol: a stop keeps it
    write_report(options, result, time.perf_counter() - started)
    return result


def _train_rows(trainings: list[TrainingRun], protocol: str) -> list[str]:
    rows = ["| variant | seeds | trainable params | of which MAW | of which LoRA | total params | train s (mean) |",
            "|---|---|---|---|---|---|---|"]
    by_variant: dict = {}
    for t in trainings:
        if t.protocol != protocol:
            continue
        path = Path(t.options.output_dir) / "train_summary.json"
        if path.is_file():
            by_variant.setdefault(t.variant, []).append(json.loads(path.read_text(encoding="utf-8")))
    for variant, summaries in by_variant.items():
        p = summaries[0].get("parameters", {})
        seconds = sum(s.get("train_seconds") or 0 for s in summaries) / len(summaries)
        rows.append(f"| {variant} | {len(summaries)} | {p.get('trainable', 0):,} | {p.get('maw', 0):,} | "
                    f"{p.get('lora', 0):,} | {p.get('total', 0):,} | {seconds:.1f} |")
    return rows


def write_report(options: StudyOptions, result: StudyResult, seconds: float) -> Path:
    """``report.md``: per protocol, the suite summary (significance against the baseline) and the training table."""
    from maw_reranker.utils.io import atomic_write

    lines = [f"# Study {options.name}", "", f"Seeds {list(options.seeds)}, baseline `{options.baseline}`, model "
             f"`{options.model}`; wall time {seconds / 60:.1f} min" + (" (quick run: not the study's results)"
                                                                       if options.quick_run else ""), ""]
    if result.partial:
        done = sum(t.done for t in result.trainings)
        lines += [f"**Partial**: {done} of {len(result.trainings)} trainings complete (the time guard, "
                  f"`time_budget_s: {options.time_budget_s}`, stopped the study); the tables cover the complete ones "
                  "(the `seeds` column of the training table says how many per variant). Run the study again to "
                  "continue.", ""]
    for protocol, summaries in result.summaries.items():
        lines += [f"## {protocol}", ""]
        for dataset, folder in summaries.items():
            md = Path(folder) / "summary.md" if folder else None
            lines += [md.read_text(encoding="utf-8").strip() if md and md.is_file() else f"{dataset}: no summary", ""]
        for dataset, folder in result.untouched.get(protocol, {}).items():
            md = Path(folder) / "summary.md" if folder else None
            lines += [f"### Against the untouched checkpoint (`{options.untouched}`)", "",
                      md.read_text(encoding="utf-8").strip() if md and md.is_file() else f"{dataset}: no summary", ""]
        lines += ["### Training", "", *_train_rows(result.trainings, protocol), ""]
    result.report.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(result.report) as handle:
        handle.write("\n".join(lines) + "\n")
    return result.report
