"""The reranking loop: pairs to a depth, scores in input order, depth log, bad input, sharding by query."""

import logging

import numpy as np
import pytest

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.evaluate import rerank as rerank_mod
from maw_reranker.evaluate.rerank import RerankError, build_pairs, rerank, score_pairs, shard_qids
from maw_reranker.maw.patcher import maw_layers
from tests.data.fixtures import DOCS, QUERIES

TEXTS = {d: f"{title} {text}" for d, (title, text) in DOCS.items()}
# Every query gets every document, with a first-stage score tie (d5, d6) to pin the tie order.
POOL = {q: {"d1": 6.0, "d2": 5.0, "d3": 4.0, "d4": 3.0, "d5": 2.0, "d6": 2.0} for q in QUERIES}


@pytest.fixture(scope="module")
def plain(model_dir):
    return CrossEncoderWithMAW.from_pretrained(model_dir, maw=None, device="cpu")


@pytest.fixture(scope="module")
def maw_model(model_dir):
    return CrossEncoderWithMAW.from_pretrained(model_dir, maw=MAWConfig(depth_dim=4, maw_strength=0.5), device="cpu")


def test_build_pairs_depth_and_first_stage_order():
    ps = build_pairs(POOL, QUERIES, TEXTS, depth=5)
    assert ps.qids == sorted(QUERIES)
    q1 = [p for p in ps.pairs if p.qid == "q1"]
    # score descending, the 2.0 tie broken by docid: d5 is rank 5, d6 falls beyond the depth
    assert [(p.docid, p.first_stage_rank, p.first_stage_score) for p in q1] == [
        ("d1", 1, 6.0), ("d2", 2, 5.0), ("d3", 3, 4.0), ("d4", 4, 3.0), ("d5", 5, 2.0)]
    assert q1[0].query == QUERIES["q1"] and q1[0].doc == TEXTS["d1"]
    assert ps.tail["q1"] == [("d6", 2.0)]
    assert len(build_pairs(POOL, QUERIES, TEXTS).pairs) == 6 * len(QUERIES)  # default: the whole pool
    assert [p.qid for p in build_pairs(POOL, QUERIES, TEXTS, max_queries=2).pairs][::6] == ["q1", "q2"]


def test_build_pairs_bad_input_is_an_error_or_a_logged_skip(caplog):
    with pytest.raises(RerankError, match="empty"):
        build_pairs({}, QUERIES, TEXTS)
    with pytest.raises(RerankError, match="empty"):
        build_pairs({"q1": {}}, QUERIES, TEXTS)
    pool = {"q1": {"d1": 2.0, "ghost": 1.0}, "q2": {"d2": 1.0}}
    with pytest.raises(RerankError, match=r"1 pool documents .* q1/ghost"):
        build_pairs(pool, QUERIES, TEXTS)
    with caplog.at_level(logging.WARNING):
        ps = build_pairs(pool, QUERIES, TEXTS, on_missing="skip")
    assert "q1/ghost" in caplog.text and ps.skipped_docs == {"q1": ["ghost"]}
    assert [(p.qid, p.docid) for p in ps.pairs] == [("q1", "d1"), ("q2", "d2")]
    with pytest.raises(RerankError, match="no query text.*qX"):
        build_pairs({"qX": {"d1": 1.0}, "q1": {"d1": 1.0}}, QUERIES, TEXTS)
    ps = build_pairs({"qX": {"d1": 1.0}, "q1": {"d1": 1.0}}, QUERIES, TEXTS, on_missing="skip")
    assert ps.skipped_queries == ["qX"] and ps.qids == ["q1"]
    with pytest.raises(RerankError, match="no pool query has a query text"):
        build_pairs({"qX": {"d1": 1.0}}, QUERIES, TEXTS, on_missing="skip")
    with pytest.raises(ValueError, match="depth"):
        build_pairs(POOL, QUERIES, TEXTS, depth=0)


def test_score_pairs_keeps_input_order_across_chunks(plain):
    pairs = [(QUERIES[q], TEXTS[d]) for q in QUERIES for d in TEXTS]
    direct = plain.predict(pairs, batch_size=64)
    chunked = score_pairs(plain, pairs, batch_size=2)  # 8-pair chunks of 2-pair batches
    np.testing.assert_allclose(chunked, direct, atol=1e-5)
    one_by_one = np.array([plain.predict([p])[0] for p in pairs[:5]])
    np.testing.assert_allclose(chunked[:5], one_by_one, atol=1e-5)


def test_rerank_run_rows_and_no_depth_log_for_plain_model(plain):
    res = rerank(plain, POOL, QUERIES, TEXTS, depth=4, batch_size=3, show_progress=False)
    assert set(res.run) == set(QUERIES) and all(len(v) == 4 for v in res.run.values())
    assert res.n_pairs == len(res.rows) == 4 * len(QUERIES)
    pairs = [(QUERIES[r[0]], TEXTS[r[1]]) for r in res.rows]
    np.testing.assert_allclose([r[2] for r in res.rows], plain.predict(pairs), atol=1e-5)
    assert res.rows[0][:2] == ("q1", "d1") and res.rows[0][3:] == (1, 6.0)
    assert all(res.run[q][d] == s for q, d, s, _, _ in res.rows)
    assert res.depth_rows == []
    assert res.info()["pairs"] == res.n_pairs and res.pairs_per_second > 0


def test_rerank_append_tail_keeps_pool_below_reranked(plain):
    res = rerank(plain, POOL, QUERIES, TEXTS, depth=2, show_progress=False, append_tail=True)
    for q, ranking in res.run.items():
        ordered = sorted(ranking, key=lambda d: -ranking[d])
        assert ordered[2:] == ["d3", "d4", "d5", "d6"]  # first-stage order (d5/d6 tie by docid)
        assert set(ordered[:2]) == {"d1", "d2"}


def test_rerank_depth_log_matches_layers(maw_model):
    res = rerank(maw_model, POOL, QUERIES, TEXTS, depth=3, batch_size=4, show_progress=False)
    layers = {str(m.layer_index) for m in maw_layers(maw_model.model).values()}
    assert len(res.depth_rows) == res.n_pairs
    assert [(r["qid"], r["docid"]) for r in res.depth_rows] == [r[:2] for r in res.rows]
    for row in res.depth_rows:
        assert set(row["layers"]) == layers
        for info in row["layers"].values():
            w = np.array(info["weights"])
            assert w.shape == (4,) and abs(w.sum() - 1) < 1e-4 and info["selected"] == int(w.argmax())
    assert not rerank(maw_model, POOL, QUERIES, TEXTS, depth=1, log_depth=False, show_progress=False).depth_rows


class FakeState:
    def __init__(self, index, count):
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0


def test_sharding_partitions_queries(plain, monkeypatch):
    assert shard_qids(list("abcde"), 0, 2) == ["a", "c", "e"] and shard_qids(list("abcde"), 1, 2) == ["b", "d"]
    full = rerank(plain, POOL, QUERIES, TEXTS, depth=3, show_progress=False)
    monkeypatch.setattr(rerank_mod, "_gather", lambda values, state: values)  # each process keeps its own share
    shards = [rerank(plain, POOL, QUERIES, TEXTS, depth=3, show_progress=False, state=FakeState(i, 2))
              for i in range(2)]
    rows = [r for s in shards for r in s.rows]
    assert sorted(r[:2] for r in rows) == sorted(r[:2] for r in full.rows)
    assert not {r[0] for r in shards[0].rows} & {r[0] for r in shards[1].rows}
    by_pair = {r[:2]: r[2] for r in full.rows}
    assert all(abs(by_pair[r[:2]] - r[2]) < 1e-5 for r in rows)
    assert shards[0].num_processes == 2
