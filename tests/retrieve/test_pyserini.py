"""Pyserini engine (Lucene via Anserini); skipped unless `pip install 'maw-reranker[pyserini]'` is done."""

import json

import pytest

from maw_reranker.data import load_dataset, read_run
from maw_reranker.retrieve import build_pool
from tests.data.fixtures import EXPECTED_TOP, write_beir

pytestmark = pytest.mark.pyserini


def test_pyserini_and_bm25s_agree_on_a_toy_corpus(tmp_path):
    ds = load_dataset(write_beir(tmp_path / "toy"))
    lucene = read_run(build_pool(ds, engine="pyserini", k=10, pools_dir=tmp_path / "p"))
    embedded = read_run(build_pool(ds, engine="bm25s", k=10, pools_dir=tmp_path / "p"))
    for qid, top in EXPECTED_TOP.items():
        assert max(lucene[qid], key=lucene[qid].get) == top
        # Same analysis (stopwords, Porter) and BM25 => the same matching docs, in the same order.
        assert sorted(lucene[qid], key=lucene[qid].get) == sorted(embedded[qid], key=embedded[qid].get)
        for docid, score in lucene[qid].items():
            assert embedded[qid][docid] == pytest.approx(score, rel=0.05)  # Lucene stores lengths lossily


def test_pyserini_index_is_built_once_and_params_apply(tmp_path):
    ds = load_dataset(write_beir(tmp_path / "toy"))
    first = build_pool(ds, engine="pyserini", k=5, pools_dir=tmp_path / "p")
    meta = json.loads(first.with_name(first.name + ".json").read_text())
    assert meta["index"].startswith("built:") and meta["versions"]["pyserini"]
    other = build_pool(ds, engine="pyserini", k=5, k1=1.2, b=0.75, pools_dir=tmp_path / "p")
    meta = json.loads(other.with_name(other.name + ".json").read_text())
    assert meta["index"].startswith("cached:")  # k1/b are search-time settings for Lucene
    assert read_run(first)["q1"] != read_run(other)["q1"]


def test_ctrl_c_during_an_index_build_says_interrupted_and_leaves_nothing(tmp_path):
    """A Ctrl-C (SIGINT to the process group, as a terminal sends it) during the build: the JVM no longer ends the
    process silently (exit 130, no line, the temporaries left) nor holds the interrupt until indexing ends."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path / "big"
    (folder / "qrels").mkdir(parents=True)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    with (folder / "corpus.jsonl").open("w") as f:  # large enough that indexing takes seconds
        for i in range(60000):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(words, k=30))}) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "w1 w2"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    pools = tmp_path / "pools"
    cmd = [sys.executable, "-m", "maw_reranker.cli.main", "build-pools", "--dataset", str(folder), "--split", "test",
           "--pool-engine", "pyserini", "--pools-dir", str(pools), "--pool-k", "10", "--threads", "1"]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=repo,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    lines = []
    try:
        for line in proc.stderr:  # the JVM is up (the engine started it); the build begins
            lines.append(line)
            if "indexing" in line:
                break
        time.sleep(1.0)  # into writing the collection or into Anserini's indexer
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, rest = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("maw-rerank build-pools: interrupted"), err[-2000:]
    assert waited < 30, waited
    indexes = pools / "_indexes"
    assert [p.relative_to(indexes) for p in indexes.rglob("*") if p.is_file() or p.name.startswith(".")] == []
    assert not list(pools.rglob("*.run"))
