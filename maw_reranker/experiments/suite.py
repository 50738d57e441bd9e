"""A suite: variants x seeds x datasets from YAML, planned and checked up front, run (complete runs skipped), then
per dataset a summary against the baseline variant and plots.

A suite file (``configs/suites/*.yaml``) names datasets and variants. A path is taken as it is; a bare name is
looked up as ``configs/<datasets|models>/<name>.yaml`` in the working directory, then among the packaged configs:

* a dataset entry: a dataset config name/file, a dataset name or path (``{dataset: ...}``), or a mapping of
  dataset options, optionally with ``config: <name>`` to start from a file;
* a variant entry: a model config name/file (the variant is named after the file), or a mapping with ``name``,
  optional ``config`` (a model config to start from), option overrides (``maw: {...}`` merges into the
  config's), and optional ``grid: {"maw.maw_strength": [...], "maw.depth_dim": [...]}`` expanding to one
  variant per combination, named ``<name>-maw_strength0.1-depth_dim4``.

``{variant}`` and ``{seed}`` in a string option are replaced per run, e.g. ``model: runs/study/{variant}/seed_{seed}/final``
for a model trained per seed.

Each run's options = dataset config, then variant config, then the suite's ``overrides``. Every run is planned
(unknown keys, MAW fields, model paths, datasets, measures, run folders) before the first one starts, and executed
from that plan. Summaries go to ``<output_dir>/<dataset>/_suites/<suite name>/``; only the suite's own variants and
seeds enter them, so several suites can share one experiments tree.
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from maw_reranker.config.files import ConfigError, deep_merge, find_config, load_yaml_config
from maw_reranker.config.parser import parse_options
from maw_reranker.config.sections import DatasetOptions, HFOptions, dataset_from_options
from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.experiments.eval_run import EvalOptions, EvalPlan, execute, is_done, plan_eval
from maw_reranker.utils.errors import with_context
from maw_reranker.utils.text import slugify

logger = logging.getLogger(__name__)
RESERVED = {"variant", "seed", "output_dir", "force"}  # set per run by the suite itself


@dataclass
class SuiteOptions:
    CONFIG_KINDS = ("suites",)
    RENAMED = {"out_dir": "use 'output_dir'"}

    name: str = field(default="suite", metadata={"help": "suite name: summaries go to <output_dir>/<dataset>/_suites/<name>/"})
    datasets: list = field(default_factory=list, metadata={
        "help": "datasets: each a dataset config name or file (`maw-rerank configs`), or a mapping of dataset and "
                "eval options ({dataset: scifact, split: test, depth: 100})"})
    variants: list = field(default_factory=list, metadata={"help": "variant entries: model config names/files or mappings"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "run seeds"})
    baseline: str = field(default="non_maw", metadata={"help": "the variant every other is compared against"})
    overrides: dict = field(default_factory=dict, metadata={"help": "eval options applied to every run, last"})
    output_dir: str = field(default="experiments", metadata={"help": "experiments folder"})
    force: bool = field(default=False, metadata={"help": "redo complete runs"})
    summary_measures: Optional[list[str]] = field(default=None, metadata={
        "help": "measures of the summaries and plots (default: each dataset's primary measures)"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots (depth usage, per-query deltas)"})
    n_resamples: int = field(default=10_000, metadata={"help": "bootstrap resamples for the CI"})
    alpha: float = field(default=0.05, metadata={"help": "Holm-adjusted significance level"})
    dry_run: bool = field(default=False, metadata={"help": "print the planned runs and exit"})

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"option 'n_resamples' must be >= 1, got {self.n_resamples}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"option 'alpha' must be in (0, 1), got {self.alpha}")
        if not str(self.output_dir).strip():
            raise ValueError("option 'output_dir' is empty")
        if self.summary_measures is not None:
            from maw_reranker.data.measures import check_measures

            check_measures(self.summary_measures, "summary_measures")
        reserved = sorted(set(self.overrides or {}) & RESERVED)
        if reserved:
            raise ValueError(f"option 'overrides' cannot set {reserved}: they are the suite's own options "
                             "(set them on the suite)")


def _with_config(entry: dict, kind: str, where: str) -> dict:
    entry = dict(entry)
    config = entry.pop("config", None)
    if config is None:
        return entry
    path = find_config(str(config), kind)
    if path is None:
        raise ConfigError(f"{where}: config {config!r} not found (nor configs/{kind}/{config}.yaml)")
    return deep_merge(load_yaml_config(path), entry)


def dataset_entries(entries: list) -> list[dict]:
    if not entries:
        raise ConfigError("suite: option 'datasets' is empty")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            # A config only when it is one (a .yaml file or a config name); any other path is a dataset itself.
            looks_like_config = entry.endswith((".yaml", ".yml")) or not Path(entry).expanduser().exists()
            path = find_config(entry, "datasets") if looks_like_config else None
            out.append(load_yaml_config(path) if path is not None else {"dataset": entry})
        elif isinstance(entry, dict):
            out.append(_with_config(entry, "datasets", f"suite dataset #{i + 1}"))
        else:
            raise ConfigError(f"suite dataset #{i + 1}: expected a name, a path or a mapping, got {entry!r}")
    return out


def _nested(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def variant_entries(entries: list) -> list[tuple[str, dict]]:
    if not entries:
        raise ConfigError("suite: option 'variants' is empty")
    out = []
    for i, entry in enumerate(entries):
        where = f"suite variant #{i + 1}"
        if isinstance(entry, str):
            path = find_config(entry, "models")
            if path is None:
                raise ConfigError(f"{where}: model config {entry!r} not found (nor configs/models/{entry}.yaml)")
            out.append((path.stem, load_yaml_config(path)))
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a config name/path or a mapping, got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None) or (Path(str(entry["config"])).stem if entry.get("config") else None)
        if not name:
            raise ConfigError(f"{where}: a mapping needs 'name' (or 'config')")
        grid = entry.pop("grid", None)
        base = _with_config(entry, "models", where)
        if grid is None:
            out.append((str(name), base))
            continue
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{where}: 'grid' must map option keys (dotted for nested) to non-empty lists")
        for combo in itertools.product(*grid.values()):
            label = "-".join(f"{k.split('.')[-1]}{v}" for k, v in zip(grid, combo))
            config = base
            for key, value in zip(grid, combo):
                config = deep_merge(config, _nested(key, value))
            out.append((f"{name}-{label}", config))
    names = [n for n, _ in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"suite: duplicate variant names {duplicates}")
    return out


def expand(options: SuiteOptions) -> list[EvalOptions]:
    """Every run of the suite as checked ``EvalOptions`` (dataset-major, then variant, then seed).

    Keys, values and MAW specs are checked here; models and datasets are not opened (see :func:`plan`).
    """
    variants = variant_entries(options.variants)
    if options.baseline not in [n for n, _ in variants]:
        raise ConfigError(f"suite: baseline {options.baseline!r} is not one of the variants {[n for n, _ in variants]}")
    if not options.seeds:
        raise ConfigError("suite: option 'seeds' is empty")
    allowed = {f.name for f in dataclasses.fields(EvalOptions)}
    runs = []
    for d_index, dataset in enumerate(dataset_entries(options.datasets)):
        for name, variant in variants:
            for seed in options.seeds:
                merged = deep_merge(deep_merge(dataset, variant), dict(options.overrides or {}))
                merged = {k: _fill(v, name, seed) for k, v in merged.items()}
                merged.update(variant=name, seed=seed, output_dir=options.output_dir, force=options.force)
                unknown = sorted(set(merged) - allowed)
                if unknown:
                    raise ConfigError(f"{_where(name, d_index, merged)}: unknown option '{unknown[0]}'; allowed: "
                                      f"{', '.join(sorted(allowed))}")
                try:
                    runs.append(parse_options(EvalOptions, merged, source=f"suite {options.name!r}"))
                except ValueError as exc:
                    raise ConfigError(f"{_where(name, d_index, merged)}: {exc}") from None
    return runs


def _fill(value, variant: str, seed: int):
    """``{variant}`` and ``{seed}`` in a string option (e.g. a trained model per seed: runs/x/{variant}/seed_{seed})."""
    if isinstance(value, str) and ("{seed}" in value or "{variant}" in value):
        return value.replace("{seed}", str(seed)).replace("{variant}", variant)
    return value


def _where(variant: str, d_index: int, options) -> str:
    dataset = options.get("dataset") if isinstance(options, dict) else options.dataset
    return f"suite variant {variant!r}, dataset #{d_index + 1} ({dataset!r})"


def plan_runs(runs: list[EvalOptions]) -> list[EvalPlan]:
    """Plan every run (models, datasets, measures, folders resolved); each dataset is loaded once."""
    dataset_keys = [f.name for section in (DatasetOptions, HFOptions) for f in dataclasses.fields(section)]
    loaded: dict = {}
    plans = []
    for run_options in runs:
        try:
            key = repr([getattr(run_options, k) for k in dataset_keys])
            if key not in loaded:
                loaded[key] = dataset_from_options(run_options)
            plans.append(plan_eval(run_options, dataset=loaded[key]))
            if not run_options.force:
                is_done(plans[-1])  # a complete run of other settings is refused now, not after the others ran
        except (ValueError, OSError) as exc:
            raise with_context(exc, f"suite variant {run_options.variant!r}, seed {run_options.seed}, dataset "
                                    f"{run_options.dataset!r}") from None
    folders = [r.artifacts.output_dir for r in plans]
    clashes = sorted({str(f) for f in folders if folders.count(f) > 1})
    if clashes:
        raise ConfigError(f"suite: several runs would write the same folder: {clashes[0]}")
    return plans


def plan(options: SuiteOptions) -> list[EvalPlan]:
    """Every run of the suite, planned and checked before the first one starts; nothing is written."""
    return plan_runs(expand(options))


# -- running and summarising ------------------------------------------------------------------------------------
@dataclass
class SuiteOutcome:
    runs: list  # EvalOutcome per planned run, in order
    summaries: dict = field(default_factory=dict)  # dataset slug -> summary folder (None when not summarised)


def _query_means(seeds: dict, measure: str) -> dict:
    """Per-query value averaged over seeds (the values the paired tests use)."""
    import numpy as np

    per_seed = [r["per_query"][measure] for r in seeds.values()]
    return {q: float(np.mean([s[q] for s in per_seed])) for q in per_seed[0]}


def summarize_dataset(dataset_dir: Path, seeds_by_variant: dict, baseline: str, measures: list, output_dir: Path,
                      plots: bool = True, **summary_kwargs) -> Optional[dict]:
    """Summary (summary.json/.md) and plots of the given variants/seeds of one dataset; None without metrics."""
    from maw_reranker.evaluate.summary import load_suite, summarize, write_summary

    loaded = load_suite(dataset_dir)
    results = {v: {s: r for s, r in loaded.get(v, {}).items() if s in seeds} for v, seeds in seeds_by_variant.items()}
    results = {v: r for v, r in results.items() if r}
    if baseline not in results:
        logger.warning("%s: baseline %r has no metrics (no qrels?); no summary", dataset_dir.name, baseline)
        return None
    summary = summarize(results, baseline, measures, dataset=dataset_dir.name, **summary_kwargs)
    json_path, md_path = write_summary(summary, output_dir)
    logger.info("summary: %s", md_path)
    if plots:
        _suite_plots(dataset_dir, results, seeds_by_variant, baseline, measures, output_dir)
    return summary


def _suite_plots(dataset_dir: Path, results: dict, seeds_by_variant: dict, baseline: str, measures: list,
                 output_dir: Path) -> None:
    from maw_reranker.evaluate.plots import plot_depth_usage, plot_query_deltas

    for variant, seeds in seeds_by_variant.items():
        logs = [dataset_dir / variant / f"seed_{s}" / RunArtifacts.DEPTH_LOG for s in seeds]
        logs = [p for p in logs if p.is_file() and p.stat().st_size > 0]
        if logs:  # the first seed's log: seeds of a zero-shot variant select alike
            plot_depth_usage(logs[0], output_dir / f"depth_{slugify(variant)}.png")
    for variant, seeds in results.items():
        if variant == baseline:
            continue
        for m in measures:
            plot_query_deltas(_query_means(results[baseline], m), _query_means(seeds, m), m,
                              output_dir / f"delta_{slugify(variant)}_{slugify(m)}.png",
                              label_a=baseline, label_b=variant)


def run_suite(runs: list, baseline: str, name: str = "suite", summary_measures: Optional[list] = None,
              plots: bool = True, state: Any = "auto", **summary_kwargs) -> SuiteOutcome:
    """Execute (or skip, when complete) every planned run, then summarise each dataset against ``baseline``.

    ``runs``: ``EvalPlan`` objects from :func:`plan` (``EvalOptions`` are planned here). ``summary_measures``:
    measures of the summary and plots (default: each dataset's primary measures; the Holm family grows with
    every measure added).
    """
    from maw_reranker.evaluate.metrics import measure_names
    from maw_reranker.evaluate.rerank import distributed_state

    state = distributed_state() if state == "auto" else state
    plans = [r if isinstance(r, EvalPlan) else plan_eval(r) for r in runs]
    outcomes = []
    for i, run_plan in enumerate(plans, 1):
        logger.info("suite %s: run %d/%d: variant %s, seed %s, dataset %s", name, i, len(plans), run_plan.variant,
                    run_plan.options.seed, run_plan.dataset.name)
        outcomes.append(execute(run_plan, state=state))
    result = SuiteOutcome(outcomes)
    if state is not None and not state.is_main_process:
        return result
    by_dataset: dict = {}
    for out in outcomes:
        entry = by_dataset.setdefault(out.run_dir.parent.parent, {"seeds": {}, "primary": out.primary})
        entry["seeds"].setdefault(out.variant, []).append(str(out.seed))
    for dataset_dir, entry in by_dataset.items():
        measures = measure_names(summary_measures) if summary_measures else entry["primary"]
        output_dir = dataset_dir / "_suites" / slugify(name)
        summary = summarize_dataset(dataset_dir, entry["seeds"], baseline, measures, output_dir, plots=plots,
                                    **summary_kwargs)
        result.summaries[dataset_dir.name] = output_dir if summary is not None else None
    return result
