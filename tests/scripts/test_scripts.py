"""Reproduction scripts: --help, argument errors, and dry runs that validate every planned run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["reproduce_main.sh", "ablations.sh", "dev_sweep.sh", "reproduce_offline.sh", "study.sh"]


def run_script(name, *args):
    env = {**os.environ, "MAW_RERANK": f"{sys.executable} -m maw_reranker.cli.main"}
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("name", SCRIPTS + ["../build_bm25.sh"])
def test_help(name):
    out = run_script(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout or "usage" in out.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_argument_is_an_error(name):
    out = run_script(name, "--no-such-flag")
    assert out.returncode == 2
    assert "--no-such-flag" in out.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("model"), "alpha beta gamma delta".split())


def test_reproduce_main_dry_run_plans_every_run(tiny_model):
    out = run_script("reproduce_main.sh", "--dry-run", "--model", str(tiny_model), "--seeds", "0,1,2")
    assert out.returncode == 0, out.stderr
    assert "18 runs planned" in out.stdout  # 3 datasets x 2 variants x 3 seeds
    assert "build_bm25.sh MSMARCO/dev-small" in out.stdout


def test_reproduce_offline_dry_run_on_fixture_data(tmp_path, tiny_model):
    dl19 = tmp_path / "dl19"
    (dl19 / "rank_llm" / "BM25").mkdir(parents=True)
    hits = [{"qid": "1", "docid": f"d{i}", "content": f"alpha text {i}", "rank": i + 1, "score": 10.0 - i}
            for i in range(3)]
    (dl19 / "rank_llm" / "BM25" / "retrieve_results_dl19.json").write_text(
        json.dumps([{"query": "alpha", "hits": hits}]))
    (dl19 / "qrels.dl19-passage.txt").write_text("1 0 d0 2\n1 0 d1 0\n")
    scifact = tmp_path / "scifact"
    (scifact / "qrels").mkdir(parents=True)
    (scifact / "corpus.jsonl").write_text(json.dumps({"_id": "a", "title": "t", "text": "alpha beta"}) + "\n")
    (scifact / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "alpha"}) + "\n")
    (scifact / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
    out = run_script("reproduce_offline.sh", str(dl19), str(scifact), "--dry-run", "--model", str(tiny_model),
                     "--seeds", "0")
    assert out.returncode == 0, out.stderr
    assert "22 runs planned" in out.stdout  # 2 datasets x 11 variants x 1 seed


def test_reproduce_offline_names_missing_files(tmp_path):
    out = run_script("reproduce_offline.sh", str(tmp_path / "nope"), str(tmp_path / "nope2"))
    assert out.returncode == 1
    assert "missing" in out.stderr and "nope" in out.stderr
