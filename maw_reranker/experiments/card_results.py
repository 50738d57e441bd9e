"""An evaluation of a saved model folder goes onto that folder's model card.

When ``eval`` (and so ``suite`` and ``study``, which run the same :func:`~maw_reranker.experiments.eval_run.execute`)
completes a run with metrics on a folder written by ``CrossEncoderWithMAW.save_pretrained``, the run's measures are
added to the folder's ``eval_results.json`` and its ``README.md`` is rewritten (``cross_encoder/card.py``). Recorded
only when the run scored the model as saved: with its own MAW settings (``maw: auto`` or the same settings), not
an unpatched or re-patched variant of it. Plain checkpoints (a hub snapshot) are never written to.
A folder that cannot be written is logged and left as it is: the evaluation itself is complete either way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from maw_reranker.config.maw_spec import AUTO
from maw_reranker.cross_encoder.card import EVAL_RESULTS_NAME, now_utc, record_eval_results
from maw_reranker.cross_encoder.model import SETTINGS_NAME
from maw_reranker.data.measures import measure_names
from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.utils.provenance import command_line

logger = logging.getLogger(__name__)


def saved_model_folder(model_path: str) -> Optional[Path]:
    """The folder when ``model_path`` is one that ``CrossEncoderWithMAW.save_pretrained`` wrote, else None."""
    path = Path(model_path)
    return path if path.is_dir() and (path / SETTINGS_NAME).is_file() else None


def scores_the_saved_model(maw, folder: Path) -> bool:
    """True when the run's MAW spec is the folder's own (``auto``, or the same settings as its maw_config.json)."""
    if maw == AUTO:
        return True
    from maw_reranker.maw.config import CONFIG_NAME, MAWConfig

    saved = MAWConfig.load(folder) if (folder / CONFIG_NAME).is_file() else None
    if maw is None or not getattr(maw, "use_maw", True):
        return saved is None
    return saved is not None and saved == maw


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _candidates(pool: dict) -> Optional[str]:
    if not isinstance(pool, dict) or not pool:
        return None
    where = pool.get("path") or pool.get("source")
    return f"{pool.get('kind')}: {Path(where).name if pool.get('path') else where}" if where else pool.get("kind")


def result_rows(plan, run_dir: Path) -> list[dict]:
    """The card rows of a completed run folder: the dataset's primary measures and the user's extra ones."""
    artifacts = RunArtifacts(run_dir)
    metrics = _read(artifacts.path(RunArtifacts.METRICS))
    if not metrics:
        return []
    options, ds = plan.options, plan.dataset
    wanted = measure_names(list(ds.measures) + list(options.extra_measures or []))
    config = _read(artifacts.path(RunArtifacts.CONFIG)).get("config", {})
    info = _read(artifacts.path(RunArtifacts.EVAL_INFO))
    base = {"dataset": ds.name, "split": ds.split, "queries": info.get("n_queries"), "depth": options.depth,
            "candidates": _candidates(config.get("pool")), "variant": plan.variant, "seed": options.seed,
            "precision": options.precision, "run_dir": str(run_dir.resolve()), "command": command_line(),
            "date": now_utc()}
    return [{**base, "measure": m, "value": float(metrics[m])} for m in wanted if m in metrics]


def record_on_model(plan, run_dir: Path) -> Optional[Path]:
    """Add a completed run's results to the card of the saved model folder it evaluated; the card's path, or None
    when there is nothing to record (see the module docstring)."""
    folder = saved_model_folder(plan.model_path)
    if folder is None:
        return None
    if not scores_the_saved_model(plan.maw, folder):
        logger.info("%s was evaluated with other MAW settings than it saved: its card is left as it is", folder)
        return None
    rows = result_rows(plan, Path(run_dir))
    if not rows:
        return None
    if not os.access(folder, os.W_OK):
        logger.warning("%s is not writable: its card does not show this evaluation", folder)
        return None
    try:
        card = record_eval_results(folder, rows)
    except OSError as exc:
        logger.warning("the card of %s was not updated (%s): %s is unchanged", folder, exc, EVAL_RESULTS_NAME)
        return None
    logger.info("results added to the model card %s", card)
    return card
