"""Resumable checkpoints: ``<output_dir>/checkpoints/step_<n>/`` written by ``accelerator.save_state``.

A checkpoint holds the model, optimizer, scheduler, every process's RNG states and the :class:`TrainerState`
(optimizer step, data position, best dev score). It is written into a hidden temp folder and renamed into place
once complete, and ``trainer_state.json`` is written last, so a run killed while saving leaves the previous
checkpoint as the newest complete one.

``metrics.jsonl`` (one JSON row per dev evaluation, appended) is read back on resume with :func:`read_metrics`:
a torn last line (a run killed or a power loss mid-append) is dropped with a warning, any other bad line is an error
naming the file and line.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from maw_reranker.data.readers import DataFormatError
from maw_reranker.train.data import DataPosition
from maw_reranker.utils.io import DISK_FULL_HINTS, atomic_write, write_json

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"  # a checkpoint being saved: checkpoints/.tmp-step_<n>/, renamed to step_<n>/ once complete


@dataclass
class TrainerState:
    """What the loop needs besides model/optimizer/scheduler/RNG to continue exactly."""

    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    best_metric: Optional[float] = None
    best_step: Optional[int] = None

    def state_dict(self) -> dict:
        return {"step": self.step, "position": self.position.state_dict(), "best_metric": self.best_metric,
                "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.position.load_state_dict(state["position"])
        self.best_metric = state.get("best_metric")
        self.best_step = state.get("best_step")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """The checkpoint folder meant by ``--resume`` ('latest' or a path); a clear error if there is none."""
    if resume in ("latest", "auto", "true"):
        found = complete_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume {resume}: no complete checkpoint under {checkpoint_root(output_dir)}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def remove_stale_checkpoint_temps(output_dir: str | Path) -> list[Path]:
    """Remove the hidden folders of checkpoint saves that were killed (``checkpoints/.tmp-step_*``); return them.

    Only for the main process of the one run writing ``output_dir``, before it saves (a save in progress would go).
    """
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    stale = sorted(p for p in root.iterdir() if p.name.startswith(TMP_PREFIX + PREFIX) and p.is_dir())
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the folder of an interrupted checkpoint save: %s", path)
    return stale


def save_checkpoint(accelerator, state: TrainerState, output_dir: str | Path, keep: int) -> Path:
    """Save on every process (RNG states are per process); the main process renames and prunes. A save cut short
    (a full disk, Ctrl-C) leaves no temporary behind and the earlier checkpoints as they were."""
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{state.step:07d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    try:
        if accelerator.is_main_process:
            remove_stale_checkpoint_temps(output_dir)  # this step's and those of saves killed at other steps
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / STATE_FILE, state.state_dict())
    except BaseException as exc:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, RuntimeError) and any(h in str(exc) for h in DISK_FULL_HINTS):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from exc
        raise
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep > 0:
            for old in complete_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint: %s", final)
    accelerator.wait_for_everyone()
    return final


def _check_loadable(path: Path) -> dict:
    """The checkpoint's own state and its RNG states must read back: accelerate skips an unreadable RNG state with a
    log line, and the run would silently stop being an exact continuation."""
    state_file = path / STATE_FILE
    try:
        info = json.loads(state_file.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{state_file}: unreadable checkpoint state ({exc}); resume from an earlier "
                              "checkpoint (--resume PATH) or start over (--force)") from None
    for rng in sorted(path.glob("random_states_*.pkl")):
        try:
            torch.load(rng, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - pickle/torch raise many kinds for a truncated file
            raise DataFormatError(f"{rng}: unreadable RNG state ({type(exc).__name__}); resuming from this checkpoint "
                                  "would not continue the run exactly: use an earlier one or start over") from None
    return info


def load_checkpoint(accelerator, path: Path) -> dict:
    info = _check_loadable(path)
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not fit the model as configured ({first}); resume with the "
                         "options it was saved with (e.g. 'maw', 'trainable', 'lora_r'), see train_config.json") from None
    return info


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (none if the file is missing).

    The last line, if it is not a JSON object, was torn by an interrupted append: it is dropped with a warning naming
    the file. Such a line anywhere else means the file is corrupt: :class:`DataFormatError` naming file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    # Blank lines (and the NUL padding a power loss can leave at the end of a file) carry nothing.
    lines = [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip(b" \t\r\x00")]
    rows = []
    for i, (lineno, raw) in enumerate(lines):
        try:
            row = json.loads(raw.decode("utf-8"))
            problem = None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
        except (UnicodeDecodeError, ValueError) as exc:
            problem = f"invalid JSON ({exc})"
        if problem is None:
            rows.append(row)
        elif i == len(lines) - 1:
            log.warning("%s:%d: dropping a torn last line (an interrupted write): %s", path, lineno, problem)
        else:
            raise DataFormatError(f"{path}:{lineno}: {problem}; only the last line of a metrics file may be torn")
    return rows


def truncate_metrics(path: str | Path, step: int) -> list[dict]:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (those past a resumed checkpoint are recomputed); the file is
    rewritten atomically, without a torn last line. Returns the rows kept."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for row in read_metrics(path):
        try:
            row_step = int(row.get("step", 0))
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: a row has a non-integer step {row.get('step')!r}") from None
        if row_step <= step:
            rows.append(row)
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return rows
