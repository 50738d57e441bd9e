"""`maw-rerank suite`: variants x seeds x datasets from YAML, skipping complete runs, then summaries and plots.

A suite file (``configs/suites/*.yaml``) names datasets and variants. Entries are resolved relative to the working
directory (run from the repository root), and a bare name is looked up as ``configs/<datasets|models>/<name>.yaml``:

* a dataset entry: a dataset config name/file, a dataset name or path (``{dataset: ...}``), or a mapping of
  dataset options, optionally with ``config: <name>`` to start from a file;
* a variant entry: a model config name/file (the variant is named after the file), or a mapping with ``name``,
  optional ``config`` (a model config to start from), option overrides (``maw: {...}`` merges into the
  config's), and optional ``grid: {"maw.maw_strength": [...], "maw.depth_dim": [...]}`` expanding to one
  variant per combination, named ``<name>-maw_strength0.1-depth_dim4``.

Each run's options = dataset config, then variant config, then the suite's ``overrides``. Every run is validated
(unknown keys, MAW fields, model paths, datasets) before the first one starts.
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from maw_reranker.cli.options import ConfigError, deep_merge, load_yaml_config, parse_options
from maw_reranker.evaluate.runner import EvalOptions, parse_maw, resolve_model_path, run_suite

HELP = "Run a suite (variants x seeds x datasets) from YAML; complete runs are skipped; per-dataset summaries + plots."
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the repository root in a source checkout


@dataclass
class Options:
    name: str = field(default="suite", metadata={"help": "suite name: summaries go to <out_dir>/<dataset>/_suites/<name>/"})
    datasets: list = field(default_factory=list, metadata={"help": "dataset entries (see `maw-rerank suite --help`)"})
    variants: list = field(default_factory=list, metadata={"help": "variant entries: model config names/files or mappings"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "run seeds"})
    baseline: str = field(default="non_maw", metadata={"help": "the variant every other is compared against"})
    overrides: dict = field(default_factory=dict, metadata={"help": "eval options applied to every run, last"})
    out_dir: str = field(default="experiments", metadata={"help": "experiments folder"})
    force: bool = field(default=False, metadata={"help": "redo complete runs"})
    summary_measures: Optional[list[str]] = field(default=None, metadata={
        "help": "measures of the summaries and plots (default: each dataset's primary measures)"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots (depth usage, per-query deltas)"})
    n_resamples: int = field(default=10_000, metadata={"help": "bootstrap resamples for the CI"})
    alpha: float = field(default=0.05, metadata={"help": "Holm-adjusted significance level"})
    dry_run: bool = field(default=False, metadata={"help": "print the planned runs and exit"})


def resolve_config_file(entry: str, kind: str) -> Optional[Path]:
    """A config file: the path itself, else ``configs/<kind>/<entry>[.yaml]`` under the cwd or the repository."""
    path = Path(entry).expanduser()
    if path.is_file():
        return path
    for root in (Path.cwd() / "configs" / kind, PACKAGE_ROOT / "configs" / kind):
        for candidate in (root / entry, root / f"{entry}.yaml"):
            if candidate.is_file():
                return candidate
    return None


def _with_config(entry: dict, kind: str, where: str) -> dict:
    entry = dict(entry)
    config = entry.pop("config", None)
    if config is None:
        return entry
    path = resolve_config_file(str(config), kind)
    if path is None:
        raise ConfigError(f"{where}: config {config!r} not found (nor configs/{kind}/{config}.yaml)")
    return deep_merge(load_yaml_config(path), entry)


def dataset_entries(entries: list) -> list[dict]:
    if not entries:
        raise ConfigError("suite: option 'datasets' is empty")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            path = resolve_config_file(entry, "datasets")
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
            path = resolve_config_file(entry, "models")
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


def plan(options: Options) -> list[EvalOptions]:
    """Every run of the suite as validated ``EvalOptions`` (dataset-major, then variant, then seed)."""
    from maw_reranker.data.options import dataset_from_options

    variants = variant_entries(options.variants)
    if options.baseline not in [n for n, _ in variants]:
        raise ConfigError(f"suite: baseline {options.baseline!r} is not one of the variants {[n for n, _ in variants]}")
    if not options.seeds:
        raise ConfigError("suite: option 'seeds' is empty")
    allowed = {f.name for f in dataclasses.fields(EvalOptions)}
    runs = []
    for d_index, dataset in enumerate(dataset_entries(options.datasets)):
        dataset_checked = False
        for name, variant in variants:
            for seed in options.seeds:
                merged = deep_merge(deep_merge(dataset, variant), dict(options.overrides or {}))
                merged.update(variant=name, seed=seed, out_dir=options.out_dir, force=options.force)
                where = f"suite variant {name!r}, dataset #{d_index + 1} ({merged.get('dataset')!r})"
                unknown = sorted(set(merged) - allowed)
                if unknown:
                    raise ConfigError(f"{where}: unknown option '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")
                try:
                    run_options = parse_options(EvalOptions, merged)
                    parse_maw(run_options.maw, seed)
                    resolve_model_path(run_options.model)
                    if not dataset_checked:  # paths and names resolve before any work starts
                        dataset_from_options(run_options)
                        dataset_checked = True
                except (ValueError, FileNotFoundError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                runs.append(run_options)
    return runs


def run(options: Options) -> int:
    runs = plan(options)
    if options.dry_run:
        for r in runs:
            print(f"{r.dataset}\t{r.variant}\tseed {r.seed}\tmodel {r.model}\tmaw {r.maw}")
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
