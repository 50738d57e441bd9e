"""Provenance of a run: git commit, package versions, system and accelerator, the command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

PACKAGES = ("torch", "transformers", "accelerate", "peft", "ir_measures", "ir_datasets", "bm25s", "numpy", "scipy",
            "maw_reranker")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(path: str | Path | None = None) -> dict:
    """Commit of the repository holding ``path`` (default: this package), and whether tracked files are modified."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {"commit": None, "dirty": None, "root": None}
    # --no-optional-locks: a read-only status that does not refresh (write) the index of a shared checkout.
    status = _git(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "root": _git(["rev-parse", "--show-toplevel"], where)}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def system_info() -> dict:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if info["cuda_available"] else []
    info["cuda_version"] = torch.version.cuda
    return info


def run_metadata(config: Mapping) -> dict:
    """The resolved config together with git commit, package versions and system info."""
    return {
        "config": dict(config),
        "git": git_info(),
        "packages": package_versions(),
        "system": system_info(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }


SECRET_FLAGS = ("--token",)


def command_line(argv: list[str] | None = None) -> str | None:
    """The ``maw-rerank ...`` command line this process was started as (``--token`` values hidden); None when it runs
    from Python (a notebook, the tests), where no command reproduces it."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not (Path(argv[0]).name == "maw-rerank"
                        or argv[0].replace("\\", "/").endswith("maw_reranker/cli/main.py")):
        return None
    shown, hide = [], False
    for arg in argv[1:]:
        shown.append("***" if hide else (arg.split("=", 1)[0] + "=***" if arg.split("=", 1)[0] in SECRET_FLAGS
                                         and "=" in arg else arg))
        hide = arg in SECRET_FLAGS
    return shlex.join(["maw-rerank", *shown])
