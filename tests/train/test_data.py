"""Group sampling: negatives never judged relevant, rank window, determinism, streaming, triples, resume skipping."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from maw_reranker.train.data import (DataPosition, PoolGroups, StreamingPoolGroups, TripleGroups, iter_batches,
                                     negative_window, sample_negatives, shuffle_stream)

RANKED = ["p", "r1", "n1", "n2", "n3", "n4", "n5"]
JUDGED = {"p": 2, "r1": 1, "n2": 0}


def test_negative_window_excludes_judged_relevant_and_respects_ranks():
    assert negative_window(RANKED, JUDGED, 1, 100) == ["n1", "n2", "n3", "n4", "n5"]  # grade 0 (n2) is a negative
    assert negative_window(RANKED, JUDGED, 4, 5) == ["n2", "n3"]


def test_graded_negatives_admit_lower_grades_only():
    assert negative_window(RANKED, JUDGED, 1, 100, max_grade=1) == ["r1", "n1", "n2", "n3", "n4", "n5"]
    assert "p" not in negative_window(RANKED, JUDGED, 1, 100, max_grade=1)


def test_sampling_modes():
    rng = np.random.default_rng(0)
    assert sample_negatives(["a", "b", "c"], 2, "top", rng) == ("a", "b")
    picked = sample_negatives(["a", "b", "c", "d"], 3, "random", rng)
    assert len(set(picked)) == 3 and set(picked) <= {"a", "b", "c", "d"}
    short = sample_negatives(["a", "b"], 5, "random", rng)  # topped up with replacement
    assert len(short) == 5 and set(short) == {"a", "b"}


def _pool(seed=0):
    positives = {f"q{i}": [f"p{i}"] for i in range(10)}
    windows = {f"q{i}": [f"n{i}_{k}" for k in range(6)] for i in range(10)}
    return PoolGroups(positives, windows, num_negatives=3, sampling="random", seed=seed)


def test_pool_groups_deterministic_per_seed_and_epoch():
    a, b = list(_pool().iter_epoch(0)), list(_pool().iter_epoch(0))
    assert a == b
    assert a != list(_pool().iter_epoch(1)) and a != list(_pool(seed=1).iter_epoch(0))
    assert sorted(g.qid for g in a) == sorted(f"q{i}" for i in range(10))  # one group per (query, positive)
    assert all(g.pos == "p" + g.qid[1:] and all(n.startswith("n" + g.qid[1:] + "_") for n in g.negs) for g in a)


def test_iter_batches_resume_skips_exactly():
    source = _pool()
    full_pos = DataPosition()
    full = iter_batches(source, 3, full_pos)
    batches = [next(full) for _ in range(7)]  # 3 batches per epoch (10 groups, last 1 dropped)
    assert full_pos.state_dict() == {"epoch": 2, "offset": 3}
    resumed = iter_batches(source, 3, DataPosition(epoch=1, offset=3))
    assert [next(resumed) for _ in range(3)] == batches[4:7]


def test_shuffle_stream_is_a_deterministic_permutation():
    out = list(shuffle_stream(range(100), 10, np.random.default_rng(3)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert out == list(shuffle_stream(range(100), 10, np.random.default_rng(3)))


def test_streaming_pool_matches_window_rules():
    rows = [("q1", d, 10.0 - i) for i, d in enumerate(RANKED)] + [("q2", "x", 1.0)]
    qrels = {"q1": JUDGED, "q2": {"y": 1}}  # threshold 2: q2 has no positive
    source = StreamingPoolGroups(lambda: iter(rows), qrels, num_negatives=2, rank_min=1, rank_max=100, threshold=2,
                                 seed=0, buffer=4)
    groups = list(source.iter_epoch(0))
    assert [g.qid for g in groups] == ["q1"]  # q2's only judged doc has grade 1 < threshold 2: no positive
    assert groups[0].pos == "p" and not set(groups[0].negs) & {"p", "r1"}
    with pytest.raises(TypeError):
        len(source)


def test_triples_drop_judged_relevant_negatives():
    Pair = namedtuple("Pair", "query_id doc_id_a doc_id_b")
    pairs = [Pair("q1", "p", "n1"), Pair("q1", "p", "r1"), Pair("q2", "p2", "n9")]
    groups = list(TripleGroups(lambda: iter(pairs), {"q1": JUDGED}, seed=0, buffer=2).iter_epoch(0))
    assert sorted((g.qid, g.negs) for g in groups) == [("q1", ("n1",)), ("q2", ("n9",))]


def test_streaming_training_end_to_end(tmp_path):
    from maw_reranker.train import train
    from tests.train.helpers import options, tiny_model_dir, write_task

    task = write_task(tmp_path / "t")
    result = train(options(tmp_path, task, tiny_model_dir(tmp_path / "m"), streaming=True, shuffle_buffer=5,
                           max_steps=4, maw={"gating_mode": "learned", "depth_dim": 2}))
    assert len(result.history) == 4 and all(np.isfinite(r["loss"]) for r in result.history)
