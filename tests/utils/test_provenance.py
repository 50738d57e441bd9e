"""Reproducibility metadata: git commit and dirty flag, package versions, system."""

import json
import re
import shutil
import subprocess

import pytest

from maw_reranker.utils.provenance import git_info, run_metadata


def test_run_metadata_contents():
    meta = run_metadata({"model": "tiny", "seed": 3})
    assert meta["config"] == {"model": "tiny", "seed": 3}
    assert set(meta["packages"]) >= {"torch", "transformers", "ir_measures", "scipy", "maw_reranker", "bm25s"}
    assert meta["packages"]["maw_reranker"] is not None and meta["packages"]["scipy"] is not None
    assert meta["system"]["cpu_count"] >= 1 and meta["system"]["torch_threads"] >= 1
    assert isinstance(meta["system"]["cuda_devices"], list)
    commit = meta["git"]["commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    json.dumps(meta)  # serialisable


def test_git_info_outside_git(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "dirty": None, "root": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_info_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    clean = git_info(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"]) and clean["dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert git_info(tmp_path)["dirty"] is True
