"""One evaluation run end to end (dataset + pool + model -> reranked run, metrics, artifacts), and suites of them.

A run lives in ``<out_dir>/<dataset slug>/<variant>/seed_<n>/`` (see ``artifacts.py``). A complete run is skipped
when asked again with the same settings (suites are idempotent); asked with different settings it is an error
unless ``force`` (a run folder never silently mixes two configurations).

A suite (``run_suite``) is a list of such runs (variants x seeds x datasets, planned from YAML by
``maw_reranker.cli.suite``), then per dataset a summary against the baseline variant and plots, written to
``<out_dir>/<dataset>/_suites/<suite name>/``. Only the suite's own variants and seeds enter its summary, so
several suites can share one experiments tree.
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from maw_reranker.cli.options import options_to_dict
from maw_reranker.data.options import DatasetOptions, dataset_from_options
from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.evaluate.metrics import measure_names, standard_measures

logger = logging.getLogger(__name__)

BENCH_PREFIX = "bench:"
# Options that change how fast a run goes or what is printed, not its results: ignored when deciding whether a
# complete run folder holds "the same" run.
EXECUTION_KEYS = frozenset({"force", "progress", "plots", "output_run", "out_dir", "device", "batch_size"})
RERANK_INFO = "rerank_info.json"
DEPTH_PLOT = "depth_usage.png"


class RunConflictError(ValueError):
    """A complete run folder holds a run made with other settings."""


@dataclass
class EvalOptions(DatasetOptions):
    model: str = field(default="", metadata={
        "help": "cross-encoder: hub id, a local directory (a saved CrossEncoderWithMAW included), or bench:NAME = "
                "NAME under $MAW_BENCH_MODELS (default ~/.cache/maw-bench-models)"})
    maw: Any = field(default="auto", metadata={
        "help": "MAW variant: a mapping of MAWConfig fields (YAML/JSON on the command line, e.g. "
                "'{depth_dim: 4, gating_mode: uniform}'), null = unpatched, auto = what the model directory saved "
                "(unpatched for a plain backbone)"})
    variant: Optional[str] = field(default=None, metadata={
        "help": "variant name (the run folder); default: non_maw, or maw-<gating>-d<D>-k<k>-a<strength>"})
    seed: int = field(default=0, metadata={
        "help": "run seed: seeds torch/numpy/random; with an explicit `maw` mapping the effective maw_random_seed "
                "is maw_random_seed + seed"})
    candidates: Optional[str] = field(default=None, metadata={
        "help": "TREC run to rerank over the dataset's documents (default: the dataset's own candidates, else its "
                "BM25 pool from build_pool)"})
    pool_engine: Literal["auto", "pyserini", "bm25s"] = field(default="auto", metadata={
        "help": "engine of the BM25 pool when one must be built"})
    pool_k: int = field(default=1000, metadata={"help": "BM25 pool size when one must be built"})
    pools_dir: str = field(default="pools", metadata={"help": "pools folder (see build-pools)"})
    depth: Optional[int] = field(default=None, metadata={"help": "rerank the top-N candidates per query "
                                                                 "(default: the whole pool)"})
    max_queries: Optional[int] = field(default=None, metadata={"help": "only the first N pool queries (by id)"})
    max_length: Optional[int] = field(default=None, metadata={"help": "max tokens per pair (default: the model's, "
                                                                      "at most 512)"})
    batch_size: int = field(default=32, metadata={"help": "pairs per forward pass"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={
        "help": "fp32, or autocast to bf16/fp16 (GPU; bf16 also on CPUs with AVX-512 BF16/AMX)"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if available)"})
    extra_measures: Optional[list[str]] = field(default=None, metadata={
        "help": "ir_measures names added to the dataset's primary metrics"})
    standard_measures: bool = field(default=True, metadata={
        "help": "also report Success, RR and nDCG at 1, 5, 10, 100, 1000 (the original study's set)"})
    missing_queries: Literal["skip", "zero"] = field(default="skip", metadata={
        "help": "judged queries absent from the run: left out (skip) or counted as 0 (zero)"})
    on_missing: Literal["error", "skip"] = field(default="error", metadata={
        "help": "pool queries without text / pool documents missing from the corpus: error, or skip and log"})
    append_tail: bool = field(default=False, metadata={
        "help": "keep candidates beyond `depth` in the run, below the reranked ones, in first-stage order"})
    out_dir: str = field(default="experiments", metadata={"help": "runs go to <out_dir>/<dataset>/<variant>/seed_<n>/"})
    output_run: Optional[str] = field(default=None, metadata={"help": "also write the reranked TREC run here"})
    log_depth: bool = field(default=True, metadata={"help": "write the MAW depth log (depth_log.jsonl)"})
    save_scores: bool = field(default=True, metadata={"help": "write per-pair scores (scores.tsv)"})
    plots: bool = field(default=True, metadata={"help": "plot depth usage of MAW runs (depth_usage.png)"})
    force: bool = field(default=False, metadata={"help": "redo the run even if its folder is complete"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (pairs/s)"})


@dataclass
class EvalOutcome:
    status: str  # "done", "skipped" (complete already) or "worker" (a non-main Accelerate process)
    run_dir: Path
    dataset: str
    variant: str
    seed: int
    metrics: Optional[dict] = None  # aggregate values; None without qrels
    measures: list = field(default_factory=list)  # every measure computed, primary first
    primary: list = field(default_factory=list)  # the dataset's primary measures (canonical names)
    info: dict = field(default_factory=dict)


def resolve_model_path(model: str) -> str:
    """``bench:NAME`` -> ``$MAW_BENCH_MODELS/NAME``; ``~`` and ``$VARS`` expanded; hub ids pass through."""
    if not model:
        raise ValueError("option 'model' is empty: give a hub id, a model directory, or bench:NAME")
    if model.startswith(BENCH_PREFIX):
        root = os.environ.get("MAW_BENCH_MODELS") or os.path.expanduser("~/.cache/maw-bench-models")
        path = Path(root) / model[len(BENCH_PREFIX):]
        if not path.is_dir():
            raise FileNotFoundError(f"model {model!r}: {path} not found (prepare it with shared/tools/get-models.sh "
                                    "or set MAW_BENCH_MODELS)")
        return str(path)
    expanded = os.path.expandvars(os.path.expanduser(model))
    if Path(expanded).exists():
        return expanded
    # "org/name" is a hub id; anything spelled like a path must exist (a clear error now, not a hub lookup later).
    if model.startswith((".", "/", "~", "$")) or model.count("/") > 1 or "\\" in model:
        raise FileNotFoundError(f"model directory not found: {expanded}")
    return model


def parse_maw(value: Any, seed: int = 0):
    """The ``maw`` option -> ``MAWConfig``, ``None`` (unpatched) or ``"auto"``; bad keys/values name themselves."""
    from maw_reranker.maw.config import MAWConfig

    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            raise ValueError(f"option 'maw': not a mapping of MAWConfig fields: {exc}") from None
        if isinstance(value, str) and value.lower() in ("none", "null", "false", "off"):
            value = None
    if value is None or value is False:
        return None
    if isinstance(value, MAWConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"option 'maw' must be a mapping of MAWConfig fields, null or auto; got {value!r}")
    try:
        config = MAWConfig.from_dict(dict(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"option 'maw': {exc}") from None
    # Seeds of a suite draw different random gates; the effective value is recorded in config.json.
    return config.replace(maw_random_seed=config.maw_random_seed + int(seed))


def default_variant_name(maw) -> str:
    if maw is None:
        return "non_maw"
    return f"maw-{maw.gating_mode}-d{maw.depth_dim}-k{maw.inject_last_k}-a{maw.maw_strength:g}"


def run_measures(options: EvalOptions, ds) -> list[str]:
    """Canonical measure names: the dataset's primary metrics, the user's, then the study's standard set."""
    names = list(ds.measures) + list(options.extra_measures or [])
    if options.standard_measures:
        names += standard_measures()
    return measure_names(names)


def load_pool(options: EvalOptions, ds) -> tuple[dict, dict]:
    """The candidate pool (qid -> {docid: score}) and a description of where it came from."""
    from maw_reranker.data.trec import read_run

    if options.candidates:
        path = Path(options.candidates).expanduser()
        return read_run(path), {"kind": "trec_run", "path": str(path.resolve())}
    shipped = ds.candidates()
    if shipped is not None:
        return shipped, {"kind": "dataset_candidates", "source": ds.source}
    from maw_reranker.retrieve import build_pool

    path = build_pool(ds, engine=options.pool_engine, k=options.pool_k, out_dir=options.pools_dir)
    return read_run(path), {"kind": "bm25_pool", "path": str(Path(path).resolve())}


def _comparable(options_dict: dict) -> dict:
    return {k: v for k, v in options_dict.items() if k not in EXECUTION_KEYS}


def _check_existing(artifacts: RunArtifacts, options_dict: dict) -> bool:
    """True when the folder holds a complete run of the same settings; error when of other settings."""
    if not artifacts.is_complete():
        return False
    try:
        saved = json.loads(artifacts.path(RunArtifacts.CONFIG).read_text(encoding="utf-8"))["config"]["options"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        saved = None
    if saved is not None and _comparable(saved) == _comparable(options_dict):
        return True
    old, new = _comparable(saved or {}), _comparable(options_dict)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise RunConflictError(f"{artifacts.out_dir} holds a complete run made with other settings (differing: "
                           f"{', '.join(differing) or 'unreadable config.json'}); pass force to overwrite it, or "
                           "choose another variant name")


def _clear_outputs(artifacts: RunArtifacts) -> None:
    """Remove a previous run's outputs that this run might not rewrite (e.g. metrics of a run that had qrels)."""
    for name in (RunArtifacts.RUN, RunArtifacts.METRICS, RunArtifacts.PER_QUERY, RunArtifacts.EVAL_INFO,
                 RunArtifacts.SCORES, RunArtifacts.DEPTH_LOG, RERANK_INFO, DEPTH_PLOT):
        artifacts.path(name).unlink(missing_ok=True)


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_eval(options: EvalOptions, state: Any = "auto") -> EvalOutcome:
    """Rerank, evaluate and write one run's artifacts; see the module docstring for when it is skipped."""
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.data.trec import write_run
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.evaluate.rerank import RerankError, distributed_state, rerank

    model_path = resolve_model_path(options.model)
    maw = parse_maw(options.maw, options.seed)
    ds = dataset_from_options(options)
    measures = run_measures(options, ds)
    if maw == "auto":
        from maw_reranker.maw.config import CONFIG_NAME, MAWConfig

        saved = Path(model_path) / CONFIG_NAME
        variant_maw = MAWConfig.load(saved.parent) if saved.is_file() else None
    else:
        variant_maw = maw
    variant = options.variant or default_variant_name(variant_maw)
    artifacts = RunArtifacts.for_run(options.out_dir, ds.slug, variant, options.seed)
    options_dict = options_to_dict(options)
    options_dict["maw"] = maw.to_dict() if hasattr(maw, "to_dict") else maw  # the resolved mapping
    options_dict["variant"] = variant
    outcome = EvalOutcome("done", artifacts.out_dir, ds.slug, variant, options.seed, measures=measures,
                          primary=measure_names(ds.measures))
    if not options.force and _check_existing(artifacts, options_dict):
        logger.info("complete already, skipping: %s (force to redo)", artifacts.out_dir)
        outcome.status = "skipped"
        metrics_path = artifacts.path(RunArtifacts.METRICS)
        outcome.metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        return outcome

    state = distributed_state() if state == "auto" else state
    main = state is None or state.is_main_process
    pool, pool_info = load_pool(options, ds)
    qrels = ds.qrels()
    # Fail before any scoring when the qrels cannot match (mismatched ids), rather than after an hour.
    if qrels and pool and not set(map(str, pool)) & set(qrels):
        raise RerankError(f"no query of the pool has qrels (pool e.g. {sorted(pool)[:5]}, qrels e.g. "
                          f"{sorted(qrels)[:5]}): mismatched ids?")
    _seed_everything(options.seed)
    device = options.device or (str(state.device) if state is not None else None)
    model = CrossEncoderWithMAW.from_pretrained(model_path, maw=maw, max_length=options.max_length, device=device)
    resolved = {
        "options": options_dict, "variant": variant, "seed": options.seed, "model_path": model_path,
        "maw": model.maw_config.to_dict() if model.maw_config is not None else None,
        "max_length": model.max_length, "measures": measures, "pool": pool_info,
        "dataset": {"name": ds.name, "slug": ds.slug, "split": ds.split, "source": ds.source,
                    "primary_measures": list(ds.measures)},
    }
    if main:
        _clear_outputs(artifacts)
        artifacts.write_config(resolved)
    result = rerank(model, pool, ds.queries(), ds.docs(), depth=options.depth, batch_size=options.batch_size,
                    precision=options.precision, on_missing=options.on_missing, max_queries=options.max_queries,
                    log_depth=options.log_depth, show_progress=options.progress, append_tail=options.append_tail,
                    state=state)
    outcome.info = result.info()
    if not main:
        outcome.status = "worker"
        return outcome
    artifacts.write_run(result.run, tag=variant)
    if options.output_run:
        write_run(Path(options.output_run).expanduser(), result.run, tag=variant)
    if not qrels:
        logger.warning("dataset %s has no qrels: wrote the reranked run only, no metrics", ds.name)
    elif options.max_queries:
        # A query subset is evaluated on itself: judged queries beyond the first N are not "missing from the run".
        chosen = set(result.run) | set(result.skipped_queries)
        qrels = {q: v for q, v in qrels.items() if q in chosen}
        logger.info("max_queries=%d: evaluating the %d chosen queries only", options.max_queries, len(chosen))
        if not qrels:
            logger.warning("none of the %d chosen queries has qrels: no metrics", len(chosen))
    if qrels:
        evaluation = evaluate_run(result.run, qrels, measures, missing_queries=options.missing_queries)
        artifacts.write_metrics(evaluation)
        outcome.metrics = evaluation.aggregate
    if options.save_scores:
        artifacts.write_scores(result.rows)
    if result.depth_rows:
        artifacts.write_depth_log(result.depth_rows)
        if options.plots:
            from maw_reranker.evaluate.plots import plot_depth_usage

            plot_depth_usage(result.depth_rows, artifacts.path(DEPTH_PLOT))
    from maw_reranker.utils.io import write_json

    write_json(artifacts.path(RERANK_INFO), {**outcome.info, "precision": options.precision,
                                             "batch_size": options.batch_size, "device": str(model.device)})
    artifacts.mark_complete({"pairs": result.n_pairs, "pairs_per_s": outcome.info["pairs_per_s"]})
    return outcome


# -- suites ----------------------------------------------------------------------------------------------------
@dataclass
class SuiteOutcome:
    runs: list  # EvalOutcome per planned run, in order
    summaries: dict = field(default_factory=dict)  # dataset slug -> summary folder (None when not summarised)


def _file_slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _query_means(seeds: dict, measure: str) -> dict:
    """Per-query value averaged over seeds (the values the paired tests use)."""
    import numpy as np

    per_seed = [r["per_query"][measure] for r in seeds.values()]
    return {q: float(np.mean([s[q] for s in per_seed])) for q in per_seed[0]}


def summarize_dataset(dataset_dir: Path, seeds_by_variant: dict, baseline: str, measures: list, out_dir: Path,
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
    json_path, md_path = write_summary(summary, out_dir)
    logger.info("summary: %s", md_path)
    if plots:
        _suite_plots(dataset_dir, results, seeds_by_variant, baseline, measures, out_dir)
    return summary


def _suite_plots(dataset_dir: Path, results: dict, seeds_by_variant: dict, baseline: str, measures: list,
                 out_dir: Path) -> None:
    from maw_reranker.evaluate.plots import plot_depth_usage, plot_query_deltas

    for variant, seeds in seeds_by_variant.items():
        logs = [dataset_dir / variant / f"seed_{s}" / RunArtifacts.DEPTH_LOG for s in seeds]
        logs = [p for p in logs if p.is_file() and p.stat().st_size > 0]
        if logs:  # the first seed's log: seeds of a zero-shot variant select alike
            plot_depth_usage(logs[0], out_dir / f"depth_{_file_slug(variant)}.png")
    for variant, seeds in results.items():
        if variant == baseline:
            continue
        for m in measures:
            plot_query_deltas(_query_means(results[baseline], m), _query_means(seeds, m), m,
                              out_dir / f"delta_{_file_slug(variant)}_{_file_slug(m)}.png",
                              label_a=baseline, label_b=variant)


def run_suite(runs: list, baseline: str, name: str = "suite", summary_measures: Optional[list] = None,
              plots: bool = True, state: Any = "auto", **summary_kwargs) -> SuiteOutcome:
    """Run (or skip, when complete) every planned ``EvalOptions``, then summarise each dataset against ``baseline``.

    ``summary_measures``: measures of the summary and plots (default: each dataset's primary measures; the Holm
    family grows with every measure added).
    """
    from maw_reranker.evaluate.rerank import distributed_state

    state = distributed_state() if state == "auto" else state
    outcomes = []
    for i, options in enumerate(runs, 1):
        logger.info("suite %s: run %d/%d: variant %s, seed %s, dataset %s", name, i, len(runs), options.variant,
                    options.seed, options.dataset)
        outcomes.append(run_eval(options, state=state))
    result = SuiteOutcome(outcomes)
    if state is not None and not state.is_main_process:
        return result
    by_dataset: dict = {}
    for out in outcomes:
        entry = by_dataset.setdefault(out.run_dir.parent.parent, {"seeds": {}, "primary": out.primary})
        entry["seeds"].setdefault(out.variant, []).append(str(out.seed))
    for dataset_dir, entry in by_dataset.items():
        measures = measure_names(summary_measures) if summary_measures else entry["primary"]
        out_dir = dataset_dir / "_suites" / _file_slug(name)
        summary = summarize_dataset(dataset_dir, entry["seeds"], baseline, measures, out_dir, plots=plots,
                                    **summary_kwargs)
        result.summaries[dataset_dir.name] = out_dir if summary is not None else None
    return result
