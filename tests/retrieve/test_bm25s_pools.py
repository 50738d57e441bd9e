import json

import pytest

from maw_reranker.data import load_dataset, read_run
from maw_reranker.retrieve import Bm25sEngine, build_pool, pool_path
from tests.data.fixtures import EXPECTED_TOP, write_beir, write_candidates_json, write_tsv_layout


@pytest.fixture
def toy(tmp_path):
    return load_dataset(write_beir(tmp_path / "toy"))


def test_bm25s_ranks_the_matching_doc_first(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path / "pools")
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
    run = read_run(build_pool(toy, engine="bm25s", k=1000, pools_dir=tmp_path))
    # "lava and ash" matches the volcano doc only ("and" is a stopword), as Lucene would return.
    assert list(run["q5"]) == ["d5"]


def test_lucene_style_analysis():
    engine = Bm25sEngine()
    tokens = engine._tokenize(["The running cats of a C compiler"], return_ids=False)[0]
    assert tokens == ["run", "cat", "c", "compil"]  # stopwords out, Porter stems, 1-char tokens kept


def test_cache_force_and_params(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=5, pools_dir=tmp_path)
    before = path.stat().st_mtime_ns
    assert build_pool(toy, engine="bm25s", k=5, pools_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == before  # cached: not rewritten
    build_pool(toy, engine="bm25s", k=5, pools_dir=tmp_path, force=True)
    assert path.stat().st_mtime_ns != before
    other = build_pool(toy, engine="bm25s", k=5, k1=1.2, b=0.75, pools_dir=tmp_path)
    assert other.name == "bm25-bm25s-k5-k1_1.2-b_0.75.run" and other != path
    assert pool_path(toy, "bm25s", 5, pools_dir=tmp_path) == path


def test_changed_local_corpus_rebuilds(tmp_path):
    folder = write_beir(tmp_path / "toy")
    path = build_pool(load_dataset(folder), engine="bm25s", k=5, pools_dir=tmp_path / "p")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "d7", "title": "", "text": "lava lava lava ash"}) + "\n")
    import os
    os.utime(corpus, (1, 1))  # a different mtime even on coarse clocks
    build_pool(load_dataset(folder), engine="bm25s", k=5, pools_dir=tmp_path / "p")
    assert max(read_run(path)["q5"], key=read_run(path)["q5"].get) == "d7"


def test_interrupted_build_leaves_no_run_file(toy, tmp_path, monkeypatch):
    real_search = Bm25sEngine.search

    def broken_search(self, queries, k):
        run = real_search(self, queries, k)
        run["q5"] = {"d5": object()}  # fails while the run is being written, after other queries
        return run

    monkeypatch.setattr(Bm25sEngine, "search", broken_search)
    with pytest.raises(TypeError):
        build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    folder = tmp_path / "toy-test"
    assert not list(folder.glob("*.run")) and not list(folder.glob(".*tmp"))


def test_bad_parameters_name_the_option(toy, tmp_path):
    with pytest.raises(ValueError, match="option 'k'"):
        build_pool(toy, engine="bm25s", k=0, pools_dir=tmp_path)
    with pytest.raises(ValueError, match="option 'b'"):
        build_pool(toy, engine="bm25s", b=1.5, pools_dir=tmp_path)
    with pytest.raises(ValueError, match="option 'engine'"):
        build_pool(toy, engine="lucene", pools_dir=tmp_path)


def test_remove_query_drops_self_hits(tmp_path):
    # BEIR convention (Anserini -removeQuery): a doc whose id is the query id is never a candidate.
    folder = write_beir(tmp_path / "toy")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "q4", "title": "", "text": "readable programming language"}) + "\n")
    run = read_run(build_pool(load_dataset(folder), engine="bm25s", k=2, pools_dir=tmp_path / "p"))
    assert list(run["q4"]) == ["d4"]  # the self-hit "q4" (the best match) is gone


def test_other_layouts_build_pools(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    tsv = load_dataset(paths["docs"], queries=paths["queries"])
    assert max(read_run(build_pool(tsv, engine="bm25s", k=2, pools_dir=tmp_path))["q2"].items(), key=lambda kv: kv[1])[0] == "d2"
    cands = load_dataset(write_candidates_json(tmp_path / "BM25" / "c.json"))
    assert set(read_run(build_pool(cands, engine="bm25s", k=2, pools_dir=tmp_path))) == {"q1", "q2", "q3"}


def test_index_is_cached_between_splits(tmp_path, monkeypatch):
    folder = write_beir(tmp_path / "toy", train_qrels=True)
    build_pool(load_dataset(folder, split="test"), engine="bm25s", k=2, pools_dir=tmp_path / "p")
    calls = []
    monkeypatch.setattr(Bm25sEngine, "build_index", lambda *a: calls.append(a))
    build_pool(load_dataset(folder, split="train"), engine="bm25s", k=2, pools_dir=tmp_path / "p")
    assert calls == [] and (tmp_path / "p" / "toy-train" / "bm25-bm25s-k2.run").is_file()


def test_auto_engine_resolves(monkeypatch):
    from maw_reranker.retrieve import resolve_engine_name

    monkeypatch.setattr("maw_reranker.retrieve.pyserini_env.pyserini_available", lambda: (False, "absent"))
    assert resolve_engine_name("auto") == "bm25s"


def _meta_path(path):
    return path.with_name(path.name + ".json")


def _break_pool(path):
    """What an earlier, different pool looks like: one stale line (so a reused file is easy to spot)."""
    path.write_text("q1 Q0 d6 1 99.000000 stale\n")


def test_a_pool_without_metadata_is_rebuilt(toy, tmp_path):
    # build-pools killed after writing the .run but before its .run.json
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    good = path.read_text()
    _break_pool(path)
    _meta_path(path).unlink()
    assert build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path) == path
    assert path.read_text() == good
    assert json.loads(_meta_path(path).read_text())["run_bytes"] == path.stat().st_size


@pytest.mark.parametrize("meta", ['{"stamp": ', "[1, 2]", ""], ids=["torn", "not-an-object", "empty"])
def test_a_pool_with_unreadable_metadata_is_rebuilt(toy, tmp_path, meta):
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    good = path.read_text()
    _break_pool(path)
    _meta_path(path).write_text(meta)
    build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    assert path.read_text() == good


@pytest.mark.parametrize("key,value", [("k1", 1.5), ("b", 0.1), ("engine", "pyserini"), ("k", 7)])
def test_a_pool_whose_metadata_records_other_parameters_is_rebuilt(toy, tmp_path, key, value):
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    good = path.read_text()
    meta = json.loads(_meta_path(path).read_text())
    meta[key] = value
    _meta_path(path).write_text(json.dumps(meta))
    _break_pool(path)
    build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    assert path.read_text() == good and json.loads(_meta_path(path).read_text())[key] != value


def test_a_pool_that_is_not_the_one_its_metadata_describes_is_rebuilt(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    good = path.read_text()
    path.write_text("".join(good.splitlines(keepends=True)[:-1]))  # e.g. a truncated copy
    build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    assert path.read_text() == good


def test_a_rebuild_killed_before_its_metadata_leaves_no_reusable_pool(toy, tmp_path, monkeypatch):
    import maw_reranker.retrieve.pools as pools

    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    real_write_json = pools.write_json

    def killed(target, data, *args, **kwargs):
        if str(target).endswith(".run.json"):
            raise KeyboardInterrupt  # after the new .run is in place
        return real_write_json(target, data, *args, **kwargs)

    monkeypatch.setattr(pools, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path, force=True)
    # The earlier metadata must not vouch for the new .run: the pair is not reusable until rebuilt.
    assert path.is_file() and not _meta_path(path).exists()
    monkeypatch.setattr(pools, "write_json", real_write_json)
    _break_pool(path)
    build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    assert "stale" not in path.read_text() and _meta_path(path).is_file()


def test_stale_temporaries_of_killed_builds_are_removed(toy, tmp_path):
    path = build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path)
    index_parent = tmp_path / "_indexes" / "toy"
    (key,) = [p.name for p in index_parent.iterdir()]
    (index_parent / f".{key}.k1ll3d_1.tmp" / "index").mkdir(parents=True)  # an index build killed with SIGKILL
    (path.parent / f".{path.name}.k1ll3d_2.tmp").write_text("q1 Q0 d1 1 1.0 half")  # a pool write killed
    build_pool(toy, engine="bm25s", k=3, pools_dir=tmp_path, force=True)
    assert [p.name for p in index_parent.iterdir()] == [key]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".json"]
