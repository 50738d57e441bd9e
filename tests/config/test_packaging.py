"""The wheel carries the configs, so `--config NAME` works after a plain (non-editable) install."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from maw_reranker.config.files import CONFIGS_DIR, KINDS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools not installed")
def test_wheel_contains_every_packaged_config_and_works_installed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("maw_reranker-*.whl"))
    # a plain (non-editable) install of the wheel, used from an empty folder: configs are found by name
    target, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import maw_reranker, sys; print(maw_reranker.__file__); sys.exit(__import__('maw_reranker.cli.main', " \
           "fromlist=['main']).main(['suite', '--config', 'main', '--dry-run']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=empty, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(str(target)) and "18 runs planned" in proc.stdout
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"maw_reranker/configs/{p.relative_to(CONFIGS_DIR).as_posix()}" for p in CONFIGS_DIR.rglob("*.yaml")}
    assert {p.parent.name for p in CONFIGS_DIR.rglob("*.yaml")} == set(KINDS)  # every kind ships a config
    assert expected and expected <= names
    assert "maw_reranker/configs/suites/main.yaml" in names


def test_config_names_resolve_from_any_directory(tmp_path, monkeypatch, capsys):
    from maw_reranker.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["suite", "--config", "main", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the packaged main table: official data (ir_datasets) and the hub model, as a user gets it
    assert "18 runs planned" in out and "NOT READY" not in out
    assert "MSMARCO/dev-small" in out and "TREC-DL-2020-passage" in out
    assert "model cross-encoder/ms-marco-MiniLM-L-12-v2" in out and "shared" not in out
    (tmp_path / "configs" / "suites").mkdir(parents=True)  # the working directory's configs come first
    (tmp_path / "configs" / "suites" / "main.yaml").write_text("datasets: [scifact]\nvariants: [non_maw]\nseeds: [0, 1, 2]\n")
    assert main(["suite", "--config", "main", "--dry-run", "true"]) == 0
    assert "3 runs planned" in capsys.readouterr().out
    assert main(["suite", "--config", "no_such_suite", "--dry-run", "true"]) == 2
    assert "no_such_suite" in capsys.readouterr().err
