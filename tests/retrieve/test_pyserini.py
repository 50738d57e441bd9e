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
