"""One evaluation run end to end: options -> a checked plan -> reranked run, metrics and artifacts in its folder.

A run lives in ``<output_dir>/<dataset slug>/<variant>/seed_<n>/`` (see ``evaluate/artifacts.py``). It is planned
first (:func:`plan_eval`: model path, MAW spec, dataset, measures, variant and folder resolved and checked, nothing
written), then executed (:func:`execute`). A complete run is skipped when asked again with the same settings
(suites are idempotent); asked with different settings it is an error unless ``force``. The run is built in a
hidden sibling folder and swapped in only when complete, so a failed or interrupted redo (``force`` or not)
leaves the earlier complete run as it was.
"""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from maw_reranker.config.maw_spec import effective_maw, maw_to_dict, parse_maw, with_run_seed
from maw_reranker.config.parser import options_to_dict
from maw_reranker.config.sections import (DatasetOptions, HFOptions, ModelOptions, PoolOptions, Precision,
                                          PrefixCacheOptions, candidates_from_options, dataset_from_options, opt,
                                          resolve_model_path)
from maw_reranker.data.hf_eval import is_hf
from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.evaluate.metrics import check_measures, measure_names, standard_measures

logger = logging.getLogger(__name__)

# Options that change how fast a run goes or what is printed, not its results: ignored when deciding whether a
# complete run folder holds "the same" run.
EXECUTION_KEYS = frozenset({"force", "progress", "plots", "output_run", "output_dir", "device", "batch_size"})
RERANK_INFO = "rerank_info.json"
DEPTH_PLOT = "depth_usage.png"


class RunConflictError(ValueError):
    """A complete run folder holds a run made with other settings."""


@dataclass
class EvalOptions(PrefixCacheOptions, PoolOptions, ModelOptions, HFOptions, DatasetOptions):
    CONFIG_KINDS = ("models", "datasets")
    RENAMED = {"out_dir": "use 'output_dir'"}

    variant: Optional[str] = opt(None, "variant name (the run folder); default: non_maw, or "
                                       "maw-<gating>-d<D>-k<k>-a<strength>")
    seed: int = opt(0, "run seed: seeds torch/numpy/random; with an explicit `maw` mapping the effective "
                       "maw_random_seed is maw_random_seed + seed")
    depth: Optional[int] = opt(None, "rerank the top-N candidates per query (default: the whole pool)")
    max_queries: Optional[int] = opt(None, "only the first N pool queries (by id)")
    batch_size: int = opt(32, "pairs per forward pass")
    precision: Precision = opt("fp32", "fp32, or autocast to bf16/fp16 (GPU; bf16 also on CPUs with AVX-512 "
                                       "BF16/AMX)")
    device: Optional[str] = opt(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    extra_measures: Optional[list[str]] = opt(None, "ir_measures names added to the dataset's primary metrics")
    standard_measures: bool = opt(True, "also report Success, RR and nDCG at 1, 5, 10, 100, 1000 (the original "
                                        "study's set)")
    missing_queries: Literal["skip", "zero"] = opt("skip", "judged queries absent from the run: left out (skip) or "
                                                           "counted as 0 (zero)")
    on_missing: Literal["error", "skip"] = opt("error", "pool queries without text / pool documents missing from "
                                                        "the corpus: error, or skip and log")
    append_tail: bool = opt(False, "keep candidates beyond `depth` in the run, below the reranked ones, in "
                                   "first-stage order")
    output_dir: str = opt("experiments", "runs go to <output_dir>/<dataset>/<variant>/seed_<n>/")
    output_run: Optional[str] = opt(None, "also write the reranked TREC run here")
    log_depth: bool = opt(True, "write the MAW depth log (depth_log.jsonl)")
    save_scores: bool = opt(True, "write per-pair scores (scores.tsv)")
    plots: bool = opt(True, "plot depth usage of MAW runs (depth_usage.png)")
    force: bool = opt(False, "redo the run even if its folder is complete")
    progress: bool = opt(True, "show a progress bar (pairs/s)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size",):
            if getattr(self, name) < 1:
                raise ValueError(f"option '{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("depth", "max_queries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"option '{name}' must be >= 1 or null, got {getattr(self, name)}")
        if self.extra_measures:
            check_measures(self.extra_measures, "extra_measures")
        if is_hf(self.dataset):
            from maw_reranker.data.hf import check_roles

            check_roles(self.hf_columns, "hf_columns")
        elif self.hf_options_given():
            raise ValueError(f"option '{self.hf_options_given()[0]}' applies to a Hugging Face dataset (dataset: "
                             f"hf:SPEC), not to dataset {self.dataset!r}")


@dataclass
class EvalPlan:
    """A run with everything resolved and checked; executing it re-resolves nothing."""

    options: EvalOptions
    model_path: str
    maw: Any  # MAWConfig, None (unpatched) or "auto", with the run seed applied
    dataset: Any  # maw_reranker.data.Dataset
    measures: list
    variant: str
    artifacts: RunArtifacts
    options_dict: dict  # what config.json records and what "the same run" is compared on


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


def default_variant_name(maw) -> str:
    if maw is None or not maw.use_maw:
        return "non_maw"
    return f"maw-{maw.gating_mode}-d{maw.depth_dim}-k{maw.inject_last_k}-a{maw.maw_strength:g}"


def run_measures(options: EvalOptions, ds) -> list:
    """Canonical measure names: the dataset's primary metrics, the user's, then the study's standard set."""
    names = list(ds.measures) + list(options.extra_measures or [])
    if options.standard_measures:
        names += standard_measures()
    return measure_names(names)


def plan_eval(options: EvalOptions, dataset=None) -> EvalPlan:
    """Resolve and check one run (model, MAW spec, dataset, measures, folder); nothing is written.

    ``dataset``: an already loaded ``Dataset`` for these dataset options (a suite loads each dataset once).
    """
    from maw_reranker.cross_encoder.checks import check_device, check_model_dir
    from maw_reranker.utils.io import check_writable

    model_path = resolve_model_path(options.model)
    check_model_dir(model_path, options.max_length)
    check_device(options.device)
    check_writable(options.output_dir, "output_dir")
    check_writable(options.pools_dir, "pools_dir")
    if options.output_run:
        check_writable(options.output_run, "output_run", is_file=True)
        _check_not_an_input(options)
    maw = with_run_seed(parse_maw(options.maw), options.seed, None if options.fresh_maw else model_path)
    ds = dataset if dataset is not None else dataset_from_options(options)
    variant = options.variant or default_variant_name(effective_maw(maw, model_path))
    artifacts = RunArtifacts.for_run(options.output_dir, ds.slug, variant, options.seed)
    options_dict = options_to_dict(options)
    options_dict.update(maw=maw_to_dict(maw), variant=variant,  # the resolved mapping
                        input_files=input_files(options, model_path))
    return EvalPlan(options, model_path, maw, ds, run_measures(options, ds), variant, artifacts, options_dict)


INPUT_OPTIONS = ("dataset", "queries", "qrels", "run", "candidates")


def _check_not_an_input(options: EvalOptions) -> None:
    """``output_run`` must not overwrite one of the run's own input files (e.g. the first-stage run)."""
    from maw_reranker.utils.io import check_not_an_input

    target = Path(options.output_run).expanduser().resolve()
    run_dir = Path(options.output_dir).expanduser().resolve()
    if run_dir in target.parents:
        raise ValueError(f"option 'output_run' ({target}) lies inside output_dir ({run_dir}), where run folders are "
                         "replaced as a whole; write it elsewhere")
    check_not_an_input({"output_run": target}, {name: getattr(options, name) for name in INPUT_OPTIONS})


def input_files(options: EvalOptions, model_path: str) -> dict:
    """Size and modification time of the run's local input files: a complete run made from files that have changed
    since is not "the same run" (it is refused, or redone with force, rather than reported as complete)."""
    stamps = {}
    paths = {name: getattr(options, name) for name in INPUT_OPTIONS}
    model = Path(model_path)
    if model.is_dir():
        paths.update({f"model/{p.name}": p for p in sorted(model.glob("*.safetensors")) + sorted(model.glob("*.bin"))})
    paths.update(_hf_files(options))
    for name, value in paths.items():
        path = Path(value).expanduser() if value else None
        if path is not None and path.is_file():
            stat = path.stat()
            stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _hf_files(options: EvalOptions) -> dict:
    """The local files of a dataset hf:SPEC and of hf_queries / hf_corpus (none for hub datasets)."""
    if not is_hf(options.dataset):
        return {}
    from maw_reranker.data.hf_eval import local_files

    specs = {"dataset": options.dataset.strip()[len("hf:"):], "hf_queries": options.hf_queries,
             "hf_corpus": options.hf_corpus}
    return {f"{name}/{path}": path for name, spec in specs.items() if spec for path in local_files(spec)}


def _comparable(options_dict: dict) -> dict:
    return {k: v for k, v in options_dict.items() if k not in EXECUTION_KEYS}


def is_done(plan: EvalPlan) -> bool:
    """True when the folder holds a complete run of the same settings; error when of other settings."""
    artifacts = plan.artifacts
    if not artifacts.is_complete():
        return False
    try:
        saved = json.loads(artifacts.path(RunArtifacts.CONFIG).read_text(encoding="utf-8"))["config"]["options"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        saved = None
    if saved is not None and _comparable(saved) == _comparable(plan.options_dict):
        return True
    old, new = _comparable(saved or {}), _comparable(plan.options_dict)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differing == ["input_files"]:
        changed = sorted(k for k in set(old["input_files"] or {}) | set(new["input_files"])
                         if (old["input_files"] or {}).get(k) != new["input_files"].get(k))
        raise RunConflictError(f"{artifacts.output_dir} holds a complete run made from input files that have changed "
                               f"since ({', '.join(changed)}); pass force to redo it")
    raise RunConflictError(f"{artifacts.output_dir} holds a complete run made with other settings (differing: "
                           f"{', '.join(differing) or 'unreadable config.json'}); pass force to overwrite it, or "
                           "choose another variant name")


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_eval(options: EvalOptions, state: Any = "auto") -> EvalOutcome:
    """Plan, then execute one run (see the module docstring for when it is skipped)."""
    return execute(plan_eval(options), state=state)


def execute(plan: EvalPlan, state: Any = "auto") -> EvalOutcome:
    """Rerank, evaluate and write one planned run's artifacts."""
    from maw_reranker.evaluate.rerank import RerankError, distributed_state

    options, ds = plan.options, plan.dataset
    outcome = EvalOutcome("done", plan.artifacts.output_dir, ds.slug, plan.variant, options.seed,
                          measures=plan.measures, primary=measure_names(ds.measures))
    if not options.force and is_done(plan):
        from maw_reranker.utils.io import remove_stale_temps

        logger.info("complete already, skipping: %s (force to redo)", plan.artifacts.output_dir)
        outcome.status = "skipped"
        # What a killed writer of this run left beside it (a --force redo killed -9: its staging folder) goes now
        # too, not only when the run is next written; a live writer's staging folder stays (utils/io.py).
        run_dir = Path(plan.artifacts.output_dir)
        remove_stale_temps(run_dir.parent, run_dir.name)
        if options.output_run:  # asked for now: the complete run's reranked run
            from maw_reranker.utils.io import atomic_write

            with atomic_write(Path(options.output_run).expanduser()) as handle:
                handle.write(plan.artifacts.path(RunArtifacts.RUN).read_text(encoding="utf-8"))
        metrics_path = plan.artifacts.path(RunArtifacts.METRICS)
        outcome.metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        return outcome

    state = distributed_state() if state == "auto" else state
    main = state is None or state.is_main_process
    candidates = candidates_from_options(options, ds)
    if not candidates.run or not any(candidates.run.values()):
        raise RerankError(f"the candidates ({candidates.description}) are empty: no (query, document) pair to rerank")
    qrels = ds.qrels()
    # Fail before any scoring when the qrels cannot match (mismatched ids), rather than after an hour.
    if qrels and candidates.run and not set(map(str, candidates.run)) & set(qrels):
        raise RerankError(f"no query of the pool has qrels (pool e.g. {sorted(candidates.run)[:5]}, qrels e.g. "
                          f"{sorted(qrels)[:5]}): mismatched ids?")
    if not main:
        _score(plan, candidates.run, state, candidates.description)
        outcome.status = "worker"
        return outcome
    from maw_reranker.utils.io import atomic_directory

    with atomic_directory(plan.artifacts.output_dir) as staging:
        outcome.metrics, outcome.info, run = _score_and_write(plan, candidates, qrels, RunArtifacts(staging), state)
        if options.output_run:  # inside: if it cannot be written, the earlier complete run stays
            from maw_reranker.data.trec import write_run

            write_run(Path(options.output_run).expanduser(), run, tag=plan.variant)
    if outcome.metrics:  # a saved model folder's card shows its evaluations (experiments/card_results.py)
        from maw_reranker.experiments.card_results import record_on_model

        record_on_model(plan, outcome.run_dir)
    return outcome


def _score(plan: EvalPlan, pool: dict, state, origin: str = ""):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.evaluate.rerank import RerankError, rerank

    options = plan.options
    _seed_everything(options.seed)
    device = options.device or (str(state.device) if state is not None else None)
    model = CrossEncoderWithMAW.from_pretrained(plan.model_path, maw=plan.maw, max_length=options.max_length,
                                                device=device, fresh_maw=options.fresh_maw)
    queries, docs = plan.dataset.queries(), plan.dataset.docs()
    scorer, cache = model, None
    try:
        if options.prefix_cache:
            cache = _open_cache(model, options, state)
            scorer = _filled_scorer(model, cache, pool, queries, docs, options)
        result = rerank(scorer, pool, queries, docs, depth=options.depth, batch_size=options.batch_size,
                        precision=options.precision, on_missing=options.on_missing, max_queries=options.max_queries,
                        log_depth=options.log_depth, show_progress=options.progress, append_tail=options.append_tail,
                        state=state)
    except RerankError as exc:  # name the data the ids came from: the candidates (a run file) and the dataset
        where = f"candidates {origin}, " if origin else ""
        raise RerankError(f"{exc} [{where}dataset {plan.dataset.source}]") from None
    finally:
        if cache is not None:
            cache.close()
    return model, result


def _open_cache(model, options: EvalOptions, state):
    from maw_reranker.cross_encoder.prefix import top_start
    from maw_reranker.cross_encoder.prefix_cache import PrefixCache

    if state is not None and state.num_processes > 1:
        raise ValueError("option 'prefix_cache' runs in a single process; leave it out under accelerate launch")
    return PrefixCache(options.prefix_cache, model, top_start(model.model, options.top_layers),
                       dtype=options.prefix_cache_dtype, batch_size=options.batch_size, show_progress=options.progress)


def _filled_scorer(model, cache, pool: dict, queries, docs, options: EvalOptions):
    """Score through the frozen-prefix cache: the states of every pair to rerank are filled once (shared by every
    variant and seed whose prefix is the same), then only the top layers run."""
    from maw_reranker.cross_encoder.top import CachedScorer
    from maw_reranker.evaluate.rerank import build_pairs

    pairs = build_pairs(pool, queries, docs, depth=options.depth, on_missing=options.on_missing,
                        max_queries=options.max_queries).pairs
    cache.fill([(p.query, p.doc) for p in pairs])
    return CachedScorer(model, cache)


def _score_and_write(plan: EvalPlan, candidates, qrels: dict, artifacts: RunArtifacts, state) -> tuple:
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.utils.io import write_json

    options, ds = plan.options, plan.dataset
    model, result = _score(plan, candidates.run, state, candidates.description)
    artifacts.write_config({
        "options": plan.options_dict, "variant": plan.variant, "seed": options.seed, "model_path": plan.model_path,
        "maw": model.maw_config.to_dict() if model.maw_config is not None else None,
        "max_length": model.max_length, "measures": plan.measures, "pool": candidates.source,
        "dataset": {"name": ds.name, "slug": ds.slug, "split": ds.split, "source": ds.source,
                    "primary_measures": list(ds.measures)},
    })
    artifacts.write_run(result.run, tag=plan.variant)
    metrics = None
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
        evaluation = evaluate_run(result.run, qrels, plan.measures, missing_queries=options.missing_queries)
        artifacts.write_metrics(evaluation)
        metrics = evaluation.aggregate
    if options.save_scores:
        artifacts.write_scores(result.rows)
    if result.depth_rows:
        artifacts.write_depth_log(result.depth_rows)
        if options.plots:
            from maw_reranker.evaluate.plots import plot_depth_usage

            plot_depth_usage(result.depth_rows, artifacts.path(DEPTH_PLOT))
    info = result.info()
    write_json(artifacts.path(RERANK_INFO), {**info, "precision": options.precision,
                                             "batch_size": options.batch_size, "device": str(model.device)})
    artifacts.mark_complete({"pairs": result.n_pairs, "pairs_per_s": info["pairs_per_s"]})
    return metrics, info, result.run
