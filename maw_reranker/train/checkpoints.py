"""Resumable checkpoints: ``<output_dir>/checkpoints/step_<n>/`` written by ``accelerator.save_state``.

A checkpoint holds the model, optimizer, scheduler, every process's RNG states and the :class:`TrainerState`
(optimizer step, data position, best dev score). It is written into a hidden temp folder and renamed into place
once complete, and ``trainer_state.json`` is written last, so a run killed while saving leaves the previous
checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from maw_reranker.train.data import DataPosition
from maw_reranker.utils.io import write_json

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
PREFIX = "step_"


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


def save_checkpoint(accelerator, state: TrainerState, output_dir: str | Path, keep: int) -> Path:
    """Save on every process (RNG states are per process); the main process renames and prunes."""
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{state.step:07d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state.state_dict())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep > 0:
            for old in complete_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint: %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
