"""A model placed in a Hugging Face hub cache under a hub id, as ../shared/tools/seed-hf-cache.sh does, so that tests
load it by that id with HF_HUB_OFFLINE=1 (in a subprocess with HF_HOME pointing at the cache's parent)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REVISION = "0" * 40


def seed_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Copy ``folder`` into ``hf_home/hub`` as the main revision of ``repo_id``; return the snapshot folder."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def offline_env(hf_home: Path, **extra: str) -> dict:
    """The environment of a process that resolves hub ids from ``hf_home`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", **extra}


def run_offline(hf_home: Path, args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    """``python ARGS`` with hub ids resolved from ``hf_home`` only."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=offline_env(hf_home, **extra))
