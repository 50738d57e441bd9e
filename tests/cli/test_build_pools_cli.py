import os
import subprocess
import sys
from pathlib import Path

from maw_reranker.cli.main import main
from tests.data.fixtures import write_beir

REPO = Path(__file__).resolve().parents[2]


def test_build_pools_command(tmp_path, capsys):
    folder = write_beir(tmp_path / "toy")
    args = ["build-pools", "--dataset", str(folder), "--pool-engine", "bm25s", "--pool-k", "3", "--pools-dir", str(tmp_path / "p")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "toy-test:" in out and "nDCG@10=1.0000" in out and "R@3=1.0000" in out
    assert (tmp_path / "p" / "toy-test" / "bm25-bm25s-k3.run").is_file()


def test_build_pools_from_yaml_config(tmp_path, capsys):
    folder = write_beir(tmp_path / "toy")
    config = tmp_path / "toy.yaml"
    config.write_text(f"dataset: {folder}\nsplit: test\nmeasures: [RR@10]\n")
    assert main(["build-pools", "--config", str(config), "--pool-engine", "bm25s", "--pools-dir", str(tmp_path / "p")]) == 0
    assert "RR@10=1.0000  R@1000=1.0000" in capsys.readouterr().out


def test_build_pools_errors(tmp_path, capsys):
    assert main(["build-pools", "--dataset", "unknown-set", "--pools-dir", str(tmp_path)]) == 1
    assert "known datasets: MSMARCO/dev-small" in capsys.readouterr().err
    assert main(["build-pools", "--dataset", "scifact", "--pool-engine", "elastic"]) == 2
    assert "allowed values: auto, pyserini, bm25s" in capsys.readouterr().err


def test_shell_wrapper(tmp_path):
    # The wrapper must run the package of the interpreter running these tests, whatever is on PATH.
    env = {**os.environ, "MAW_RERANK": f"{sys.executable} -m maw_reranker.cli.main"}
    help_out = subprocess.run(["bash", str(REPO / "build_bm25.sh"), "--help"], capture_output=True, text=True, env=env)
    assert help_out.returncode == 0 and "Usage: ./build_bm25.sh" in help_out.stdout and "--k1" in help_out.stdout
    folder = write_beir(tmp_path / "toy")
    done = subprocess.run(["bash", str(REPO / "build_bm25.sh"), str(folder), "--pool-engine", "bm25s", "--pool-k", "2",
                           "--pools-dir", str(tmp_path / "p")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p" / "toy-test" / "bm25-bm25s-k2.run").is_file()
    bad = subprocess.run(["bash", str(REPO / "build_bm25.sh"), "unknown-set"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "known datasets" in bad.stderr


def test_missing_pyserini_says_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    from maw_reranker.retrieve import pyserini_env

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyserini" else real_find_spec(name, *a))
    ok, why = pyserini_env.pyserini_available()
    assert not ok and "pip install 'maw-reranker[pyserini]'" in why
    folder = write_beir(tmp_path / "toy")
    assert main(["build-pools", "--dataset", str(folder), "--pool-engine", "pyserini", "--pools-dir", str(tmp_path)]) == 1
    assert "maw-reranker[pyserini]" in capsys.readouterr().err
    assert not list(tmp_path.glob("toy-test/*.run"))
