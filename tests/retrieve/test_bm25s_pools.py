import json

import pytest

from maw_reranker.data import load_dataset, read_run
from maw_reranker.retrieve import Bm25sEngine, build_pool, pool_path
from tests.data.fixtures import EXPECTED_TOP, write_beir, write_candidates_json, write_tsv_layout


@pytest.fixture
def toy(tmp_path):
    return load_dataset(write_beir(tmp_path / "toy"))


def test_bm25s_ranks_the_matching_doc_first(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=3, out_dir=tmp_path / "pools")
    assert path == tmp_path / "pools" / "toy-test" / "bm25-bm25s-k3.run"
    run = read_run(path)
    assert set(run) == set(EXPECTED_TOP)
    for qid, top in EXPECTED_TOP.items():
        assert max(run[qid], key=run[qid].get) == top
        assert len(run[qid]) <= 3
    first = path.read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "bm25-bm25s"
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["engine"] == "bm25s" and meta["k1"] == 0.9 and meta["b"] == 0.4 and meta["queries"] == 5


def test_only_matching_documents_are_returned(toy, tmp_path):
    run = read_run(build_pool(toy, engine="bm25s", k=1000, out_dir=tmp_path))
    # "lava and ash" matches the volcano doc only ("and" is a stopword), as Lucene would return.
    assert list(run["q5"]) == ["d5"]


def test_lucene_style_analysis():
    engine = Bm25sEngine()
    tokens = engine._tokenize(["The running cats of a C compiler"], return_ids=False)[0]
    assert tokens == ["run", "cat", "c", "compil"]  # stopwords out, Porter stems, 1-char tokens kept


def test_cache_force_and_params(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=5, out_dir=tmp_path)
    before = path.stat().st_mtime_ns
    assert build_pool(toy, engine="bm25s", k=5, out_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == before  # cached: not rewritten
    build_pool(toy, engine="bm25s", k=5, out_dir=tmp_path, force=True)
    assert path.stat().st_mtime_ns != before
    other = build_pool(toy, engine="bm25s", k=5, k1=1.2, b=0.75, out_dir=tmp_path)
    assert other.name == "bm25-bm25s-k5-k1_1.2-b_0.75.run" and other != path
    assert pool_path(toy, "bm25s", 5, out_dir=tmp_path) == path


def test_changed_local_corpus_rebuilds(tmp_path):
    folder = write_beir(tmp_path / "toy")
    path = build_pool(load_dataset(folder), engine="bm25s", k=5, out_dir=tmp_path / "p")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "d7", "title": "", "text": "lava lava lava ash"}) + "\n")
    import os
    os.utime(corpus, (1, 1))  # a different mtime even on coarse clocks
    build_pool(load_dataset(folder), engine="bm25s", k=5, out_dir=tmp_path / "p")
    assert max(read_run(path)["q5"], key=read_run(path)["q5"].get) == "d7"


def test_interrupted_build_leaves_no_run_file(toy, tmp_path, monkeypatch):
    real_search = Bm25sEngine.search

    def broken_search(self, queries, k):
        run = real_search(self, queries, k)
        run["q5"] = {"d5": object()}  # fails while the run is being written, after other queries
        return run

    monkeypatch.setattr(Bm25sEngine, "search", broken_search)
    with pytest.raises(TypeError):
        build_pool(toy, engine="bm25s", k=3, out_dir=tmp_path)
    folder = tmp_path / "toy-test"
    assert not list(folder.glob("*.run")) and not list(folder.glob(".*tmp"))


def test_bad_parameters_name_the_option(toy, tmp_path):
    with pytest.raises(ValueError, match="option 'k'"):
        build_pool(toy, engine="bm25s", k=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="option 'b'"):
        build_pool(toy, engine="bm25s", b=1.5, out_dir=tmp_path)
    with pytest.raises(ValueError, match="option 'engine'"):
        build_pool(toy, engine="lucene", out_dir=tmp_path)


def test_remove_query_drops_self_hits(tmp_path):
    # BEIR convention (Anserini -removeQuery): a doc whose id is the query id is never a candidate.
    folder = write_beir(tmp_path / "toy")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "q4", "title": "", "text": "readable programming language"}) + "\n")
    run = read_run(build_pool(load_dataset(folder), engine="bm25s", k=2, out_dir=tmp_path / "p"))
    assert list(run["q4"]) == ["d4"]  # the self-hit "q4" (the best match) is gone


def test_other_layouts_build_pools(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    tsv = load_dataset(paths["docs"], queries=paths["queries"])
    assert max(read_run(build_pool(tsv, engine="bm25s", k=2, out_dir=tmp_path))["q2"].items(), key=lambda kv: kv[1])[0] == "d2"
    cands = load_dataset(write_candidates_json(tmp_path / "BM25" / "c.json"))
    assert set(read_run(build_pool(cands, engine="bm25s", k=2, out_dir=tmp_path))) == {"q1", "q2", "q3"}


def test_index_is_cached_between_splits(tmp_path, monkeypatch):
    folder = write_beir(tmp_path / "toy", train_qrels=True)
    build_pool(load_dataset(folder, split="test"), engine="bm25s", k=2, out_dir=tmp_path / "p")
    calls = []
    monkeypatch.setattr(Bm25sEngine, "build_index", lambda *a: calls.append(a))
    build_pool(load_dataset(folder, split="train"), engine="bm25s", k=2, out_dir=tmp_path / "p")
    assert calls == [] and (tmp_path / "p" / "toy-train" / "bm25-bm25s-k2.run").is_file()


def test_auto_engine_resolves(monkeypatch):
    from maw_reranker.retrieve import resolve_engine_name

    monkeypatch.setattr("maw_reranker.retrieve.pyserini_env.pyserini_available", lambda: (False, "absent"))
    assert resolve_engine_name("auto") == "bm25s"
