"""Hard-negative mining (train/mining.py): rank window, positives, margins, num_negatives, the output file and its
sidecar, atomicity, and training on the mined run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maw_reranker.data.trec import DataFormatError, read_run
from maw_reranker.train.mining import MineOptions, MiningError, mine_negatives
from maw_reranker.utils.errors import OptionError
from tests.train.helpers import options as train_options
from tests.train.helpers import tiny_model_dir, write_task


def _qrels(task, extra: list[tuple[str, str, int]]) -> None:
    """Add judgments to the task's qrels (write_task judges d<q>_0 relevant for q<q>)."""
    path = task["dataset"] / "qrels" / "train.tsv"
    path.write_text(path.read_text() + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in extra))


def _write_run(path: Path, ranked: dict[str, list[tuple[str, float]]]) -> Path:
    path.write_text("".join(f"{q} Q0 {d} {r} {s} test\n" for q, hits in ranked.items()
                            for r, (d, s) in enumerate(hits, 1)))
    return path


def _options(tmp_path, task, **overrides) -> MineOptions:
    base = dict(dataset=str(task["dataset"]), split="train", output_run=str(tmp_path / "mined.run"), progress=False)
    base.update(overrides)
    return MineOptions(**base)


def _mine(tmp_path, task, **overrides) -> tuple[dict, dict]:
    result = mine_negatives(_options(tmp_path, task, **overrides))
    return read_run(result.output), json.loads(result.sidecar.read_text())


def _docs(run: dict, qid: str) -> list[str]:
    """A query's mined docids in rank order (score descending, as training ranks them)."""
    return [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])]


# q0's positive is d0_0 (write_task), here at rank 3 with score 8; q1's positive d1_0 is a plain candidate of q0.
Q0 = [("d1_0", 10.0), ("d2_0", 9.0), ("d0_0", 8.0), ("d3_0", 7.0), ("d4_0", 6.0), ("d5_0", 5.0), ("d6_0", 4.0),
      ("d7_0", 3.0), ("d8_0", 2.0), ("d9_0", 1.0)]
Q1 = [("d2_1", 3.0), ("d1_0", 2.0), ("d3_1", 1.0)]


@pytest.fixture()
def task(tmp_path):
    task = write_task(tmp_path / "t", n_queries=2)
    task["run"] = _write_run(tmp_path / "cands.run", {"q0": Q0, "q1": Q1})
    return task


def test_rank_window_and_judged_documents(tmp_path, task):
    # grade 0: a certified negative (kept); grade 1 at rank 6: relevant, never a negative
    _qrels(task, [("q0", "d3_0", 0), ("q0", "d5_0", 1)])
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), neg_rank_min=2, neg_rank_max=7, num_negatives=10)
    assert _docs(run, "q0") == ["d2_0", "d3_0", "d4_0", "d6_0"]  # ranks 2-7 minus d0_0 (rank 3) and d5_0 (rank 6)
    assert run["q0"]["d2_0"] == 9.0 and run["q0"]["d6_0"] == 4.0  # the miner's scores
    assert _docs(run, "q1") == ["d3_1"]  # q1: rank 1 is out of the window, its own positive d1_0 left out
    assert meta["counts"]["skipped"]["judged"] == 3


def test_graded_negatives_as_in_training(tmp_path, task):
    # threshold 2: grade 1 is not a positive; max_negative_grade 1 lets it be a negative, as train's option does
    _qrels(task, [("q0", "d0_0", 2), ("q0", "d2_0", 1)])
    path = task["dataset"] / "qrels" / "train.tsv"
    path.write_text(path.read_text().replace("q0\td0_0\t1\n", ""))
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), neg_rank_max=4, relevance_threshold=2,
                   max_negative_grade=1)
    assert _docs(run, "q0") == ["d1_0", "d2_0", "d3_0"] and "q1" not in run  # q1 has no grade-2 positive
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), neg_rank_max=4, relevance_threshold=2)
    assert _docs(run, "q0") == ["d1_0", "d3_0"]


def test_positives_are_never_mined_from_a_bm25_pool(tmp_path):
    task = write_task(tmp_path / "t")
    _qrels(task, [("q3", "d4_0", 1), ("q3", "d7_1", 2)])  # more positives than one per query
    run, meta = _mine(tmp_path, task, pool_engine="bm25s", pool_k=30, pools_dir=str(tmp_path / "pools"),
                      neg_rank_max=30, num_negatives=30)
    qrels = {}
    for line in (task["dataset"] / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    pool = read_run(meta["inputs"]["candidates"]["path"])
    assert meta["inputs"]["candidates"]["kind"] == "bm25_pool"
    for qid, hits in run.items():
        assert not {d for d in hits if qrels[qid].get(d, 0) > 0}
        assert len(hits) <= 30 and set(hits) <= set(pool[qid])
        assert all(hits[d] == pytest.approx(pool[qid][d], abs=1e-6) for d in hits)  # BM25's own scores
    assert meta["counts"]["skipped"]["judged"] >= 12


def test_absolute_margin(tmp_path, task):
    # positive score 8: margin 1.5 skips every candidate above 6.5 (the two above the positive and d3_0 at 7)
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), margin=1.5, num_negatives=3)
    assert _docs(run, "q0") == ["d4_0", "d5_0", "d6_0"]
    assert "q1" not in run  # q1: positive d1_0 scores 2, margin 1.5 skips above 0.5: both d2_1 (3) and d3_1 (1)
    assert meta["counts"]["skipped"]["margin"] == 3 + 2 and meta["counts"]["queries_without_negatives"] == 1
    # margin 0: only the candidates scoring above the positive are skipped
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), margin=0.0, num_negatives=2)
    assert _docs(run, "q0") == ["d3_0", "d4_0"] and _docs(run, "q1") == ["d3_1"]


def test_relative_margin(tmp_path, task):
    # positive 8, relative margin 0.25: skip above 6 (d1_0, d2_0, d3_0); 6.0 itself is kept
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), relative_margin=0.25, num_negatives=2)
    assert _docs(run, "q0") == ["d4_0", "d5_0"]
    assert _docs(run, "q1") == ["d3_1"]  # q1: positive 2 -> skip above 1.5: d2_1
    assert meta["counts"]["skipped"]["relative_margin"] == 3 + 1
    # both margins: a candidate is skipped by either (margin 2.5: above 5.5; relative 0.5: above 4)
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), relative_margin=0.5, margin=2.5)
    assert _docs(run, "q0") == ["d6_0", "d7_0", "d8_0", "d9_0"] and "q1" not in run
    assert meta["counts"]["skipped"]["margin"] == 4 + 2 and meta["counts"]["skipped"]["relative_margin"] == 1


def test_margin_reference_with_several_positives(tmp_path, task):
    _qrels(task, [("q0", "d6_0", 1)])  # a second positive of q0, scored 4
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), margin=0.0)
    assert _docs(run, "q0") == ["d7_0", "d8_0", "d9_0"]  # min: below the weaker positive (4)
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), margin=0.0, margin_reference="max")
    assert _docs(run, "q0") == ["d3_0", "d4_0", "d5_0", "d7_0", "d8_0", "d9_0"]  # below the better one (8)


def test_score_bounds(tmp_path, task):
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), max_score=6.0, min_score=3.0)
    assert _docs(run, "q0") == ["d4_0", "d5_0", "d6_0", "d7_0"]
    assert _docs(run, "q1") == ["d2_1"]
    assert meta["counts"]["skipped"]["max_score"] == 3 and meta["counts"]["skipped"]["min_score"] == 2 + 1


def test_positive_outside_the_pool_has_no_bm25_score(tmp_path, task):
    # q0's positive is not a candidate: with a margin there is no score to compare with, so no negatives for q0
    _write_run(task["run"], {"q0": [kv for kv in Q0 if kv[0] != "d0_0"], "q1": Q1})
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), margin=0.0)
    assert "q0" not in run and _docs(run, "q1") == ["d3_1"]
    assert meta["counts"]["unscored_positives"] == 1 and meta["counts"]["skipped"]["no_scored_positive"] == 9
    run, _ = _mine(tmp_path, task, candidates=str(task["run"]), num_negatives=2)  # without a margin: mined
    assert _docs(run, "q0") == ["d1_0", "d2_0"]


def test_num_negatives_and_sampling(tmp_path, task):
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), num_negatives=4)
    assert _docs(run, "q0") == ["d1_0", "d2_0", "d3_0", "d4_0"]
    assert meta["counts"]["queries_short"] == 1 and meta["counts"]["skipped"]["beyond_num"] == 5
    picks = set()
    for seed in range(6):
        run, _ = _mine(tmp_path, task, candidates=str(task["run"]), num_negatives=4, sampling_strategy="random", seed=seed)
        docs = _docs(run, "q0")
        assert len(docs) == 4 and set(docs) <= {d for d, _ in Q0} - {"d0_0"}
        assert docs == [d for d, _ in Q0 if d in docs]  # rank order kept
        again, _ = _mine(tmp_path, task, candidates=str(task["run"]), num_negatives=4, sampling_strategy="random", seed=seed)
        assert again == run  # deterministic per seed
        picks.add(tuple(docs))
    assert len(picks) > 1


def test_output_round_trips_and_sidecar(tmp_path, task):
    result = mine_negatives(_options(tmp_path, task, candidates=str(task["run"]), neg_rank_max=6, num_negatives=3,
                                     margin=0.5, tag="hn"))
    assert result.output.read_text().splitlines() == [
        "q0 Q0 d3_0 1 7.000000 hn", "q0 Q0 d4_0 2 6.000000 hn", "q0 Q0 d5_0 3 5.000000 hn", "q1 Q0 d3_1 1 1.000000 hn"]
    assert read_run(result.output) == {"q0": {"d3_0": 7.0, "d4_0": 6.0, "d5_0": 5.0}, "q1": {"d3_1": 1.0}}
    meta = json.loads(result.sidecar.read_text())
    assert result.sidecar == tmp_path / "mined.run.json"
    assert meta["kind"] == "mined_negatives" and meta["output"] == str(result.output.resolve())
    assert meta["run_bytes"] == result.output.stat().st_size
    assert meta["settings"] == {"miner": "bm25", "neg_rank_min": 1, "neg_rank_max": 6, "num_negatives": 3, "sampling_strategy": "top",
                                "seed": 0, "margin": 0.5, "relative_margin": None, "margin_reference": "min",
                                "max_score": None, "min_score": None, "relevance_threshold": 1,
                                "max_negative_grade": 0, "max_queries": None, "missing_positives": "error",
                                "rescore_depth": None, "tag": "hn"}
    assert meta["inputs"]["dataset"] == {"name": "t", "split": "train", "source": str(task["dataset"])}
    cands = meta["inputs"]["candidates"]
    assert cands["kind"] == "trec_run" and cands["path"] == str(task["run"].resolve())
    assert cands["file"]["bytes"] == task["run"].stat().st_size and meta["inputs"]["model"] is None
    assert meta["counts"]["negatives"] == 4 and meta["counts"]["queries_mined"] == 2
    assert meta["counts"]["queries_with_positive"] == 2 and meta["counts"]["skipped"]["margin"] == 2 + 1
    prov = meta["provenance"]
    assert {"git", "packages", "system", "created_utc", "argv"} <= set(prov)
    assert prov["config"]["output_run"] == str(tmp_path / "mined.run") and prov["config"]["margin"] == 0.5


def test_max_queries_is_trains_subset(tmp_path):
    from maw_reranker.train.sources import load_training_data

    task = write_task(tmp_path / "t")
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), max_queries=5)
    assert len(run) == 5 and meta["counts"]["queries_with_positive"] == 5
    data = load_training_data(train_options(tmp_path, task, "m", max_queries=5))
    assert {q for q, _ in data.source.items} == set(run)


def test_max_queries_picks_trains_queries_when_positives_are_skipped(tmp_path):
    """train takes its max_queries subset after missing_positives: skip drops the positives not in the corpus;
    mining must subset the same base set (one helper, train/sources.py), not every query with a judged positive."""
    from maw_reranker.train.sources import load_training_data, subset_queries

    task = write_task(tmp_path / "t")
    qrels = task["dataset"] / "qrels" / "train.tsv"
    ghosts = {"q1", "q4", "q6", "q9"}  # their only positive is not in the corpus
    qrels.write_text("".join(line.replace("\td", "\tghost-d") if line.split("\t")[0] in ghosts else line
                             for line in qrels.read_text().splitlines(keepends=True)))
    data = load_training_data(train_options(tmp_path, task, "m", max_queries=5, missing_positives="skip"))
    trained = {q for q, _ in data.source.items}
    assert len(trained) == 5 and not trained & ghosts
    # the subset of every judged query would differ: the test tells the two base sets apart
    assert set(subset_queries([f"q{i}" for i in range(12)], 5)) != trained
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), max_queries=5, missing_positives="skip")
    assert set(run) == trained and meta["counts"]["queries_with_positive"] == 5
    assert meta["settings"]["missing_positives"] == "skip"


def test_an_error_midway_leaves_no_partial_file(tmp_path, task, monkeypatch):
    from maw_reranker.train import mining

    out = tmp_path / "mined.run"
    calls = []
    real = mining.select_negatives

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(mining, "select_negatives", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cands.run", "t"]  # no output, no temporary
    # an earlier output and its sidecar are left as they were
    monkeypatch.setattr(mining, "select_negatives", real)
    mine_negatives(_options(tmp_path, task, candidates=str(task["run"])))
    before = out.read_bytes(), (tmp_path / "mined.run.json").read_bytes()
    calls.clear()
    monkeypatch.setattr(mining, "select_negatives", failing)
    with pytest.raises(RuntimeError):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"]), num_negatives=1))
    assert (out.read_bytes(), (tmp_path / "mined.run.json").read_bytes()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # nothing left to write is an error too, not an empty file
    monkeypatch.setattr(mining, "select_negatives", real)
    with pytest.raises(MiningError, match="no negative left for any query: .* skipped by rule: margin 11, judged 2"):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"]), margin=100.0))
    assert out.read_bytes() == before[0]


@pytest.mark.parametrize("overrides,message", [
    ({"output_run": ""}, "option 'output_run' is empty"),
    ({"neg_rank_min": 0}, "option 'neg_rank_min' must be >= 1"),
    ({"neg_rank_min": 5, "neg_rank_max": 4}, "option 'neg_rank_max' .4. is below 'neg_rank_min' .5."),
    ({"num_negatives": 0}, "option 'num_negatives' must be >= 1"),
    ({"margin": -1.0}, "option 'margin' must be >= 0"),
    ({"relative_margin": 1.0}, r"option 'relative_margin' must be in \[0, 1\)"),
    ({"min_score": 2.0, "max_score": 1.0}, "option 'min_score' .2.0. is above 'max_score'"),
    ({"max_negative_grade": 1}, "option 'max_negative_grade' must be >= 0 and < relevance_threshold"),
    ({"max_queries": 0}, "option 'max_queries' must be >= 1"),
    ({"seed": -1}, "option 'seed' must be >= 0"),
    ({"tag": "two words"}, "option 'tag' must be one word"),
    ({"model": "some/model"}, "option 'model' .some/model. is used by miner cross-encoder only"),
    ({"rescore_depth": 50}, "option 'rescore_depth' applies to miner cross-encoder only"),
    ({"miner": "cross-encoder"}, "option 'model' is empty: miner cross-encoder needs a model"),
    ({"miner": "cross-encoder", "model": "m", "rescore_depth": 10}, "option 'rescore_depth' .10. is below 'neg_rank_max'"),
    ({"pool_k": 0}, "option 'pool_k' must be >= 1"),
])
def test_options_are_checked(tmp_path, overrides, message):
    base = dict(dataset="d", output_run=str(tmp_path / "o.run"))
    with pytest.raises(ValueError, match=message) as caught:
        MineOptions(**{**base, **overrides})
    assert isinstance(caught.value, OptionError) or "pool_k" in overrides  # the CLI exits 2 for these


def test_bad_inputs(tmp_path, task):
    with pytest.raises(FileNotFoundError, match="option 'candidates': run file not found"):
        mine_negatives(_options(tmp_path, task, candidates=str(tmp_path / "nope.run")))
    with pytest.raises(OptionError, match="option 'output_run' .* is option 'candidates'"):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"]), output_run=str(task["run"])))
    lines = task["run"].read_text().splitlines()
    split = tmp_path / "split.run"
    split.write_text("\n".join(lines[:2] + lines[-3:] + lines[2:-3]) + "\n")  # q0, q1, q0 again
    with pytest.raises(DataFormatError, match="split.run:6: the lines of query 'q0' are not contiguous"):
        mine_negatives(_options(tmp_path, task, candidates=str(split)))
    other = _write_run(tmp_path / "other.run", {"x1": Q1})
    with pytest.raises(MiningError, match="none of the 2 queries with a positive has candidates"):
        mine_negatives(_options(tmp_path, task, candidates=str(other)))
    qrels = task["dataset"] / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text().replace("\t1\n", "\t0\n"))
    with pytest.raises(MiningError, match="no query has a positive"):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"])))
    assert not (tmp_path / "mined.run").exists()


# ---- the cross-encoder miner ---------------------------------------------------------------------------------

def _doc_texts(task) -> dict[str, str]:
    rows = [json.loads(line) for line in (task["dataset"] / "corpus.jsonl").read_text().splitlines()]
    return {r["text"].strip(): r["_id"] for r in rows}


def test_cross_encoder_rescoring_and_margins(tmp_path, task, monkeypatch):
    """The model's scores (controlled here) rank the top rescore_depth candidates; margins use its positive scores."""
    from maw_reranker.evaluate import rerank

    by_text = _doc_texts(task)
    # q0: the model prefers d9_0 > d8_0 > ... (the reverse of the first stage); the positive d0_0 scores 5.0
    model_scores = {"d0_0": 5.0, "d1_0": 0.0, "d2_0": 1.0, "d3_0": 2.0, "d4_0": 3.0, "d5_0": 4.0, "d6_0": 4.5,
                    "d7_0": 5.5, "d8_0": 6.0, "d9_0": 7.0, "d2_1": -1.0, "d3_1": -2.0}
    seen = []

    def fake_score_pairs(model, pairs, batch_size=32, precision="fp32", **kwargs):
        seen.append(list(pairs))
        return np.array([model_scores[by_text[d.strip()]] for _, d in pairs], dtype=np.float32)

    monkeypatch.setattr(rerank, "score_pairs", fake_score_pairs)
    model = tiny_model_dir(tmp_path / "m")
    common = dict(candidates=str(task["run"]), miner="cross-encoder", model=str(model), max_length=32)
    run, meta = _mine(tmp_path, task, **common, neg_rank_max=10, num_negatives=3)
    assert _docs(run, "q0") == ["d9_0", "d8_0", "d7_0"]  # the model's order, the model's scores
    assert run["q0"] == {"d9_0": 7.0, "d8_0": 6.0, "d7_0": 5.5}
    assert sum(len(p) for p in seen) == 10 + 3  # every candidate once; no positive scored without a margin
    # rescore_depth: only the first-stage top 4 are rescored (d0_0 is among them: ranks are among the rescored)
    run, _ = _mine(tmp_path, task, **common, neg_rank_max=4, rescore_depth=4)
    assert _docs(run, "q0") == ["d3_0", "d2_0", "d1_0"]
    # absolute margin against the model's positive score 5.0: skip above 4.0
    seen.clear()
    run, meta = _mine(tmp_path, task, **common, neg_rank_max=10, margin=1.0, num_negatives=2)
    assert _docs(run, "q0") == ["d5_0", "d4_0"]
    assert sum(len(p) for p in seen) == 10 + 3 + 2  # the positives are scored too
    assert meta["inputs"]["model"]["path"] == str(model) and meta["settings"]["rescore_depth"] == 10
    # relative margin 0.5: skip above 2.5
    run, meta = _mine(tmp_path, task, **common, neg_rank_max=10, relative_margin=0.5)
    assert _docs(run, "q0") == ["d3_0", "d2_0", "d1_0"]
    # q1's positive d1_0 scores 0.0: a threshold of 0 - 0 * 0.5 keeps d2_1 (-1) and d3_1 (-2)
    assert _docs(run, "q1") == ["d2_1", "d3_1"]


def test_relative_margin_with_a_negative_positive_score():
    """Logits can be negative: the threshold is positive - |positive| * relative_margin (sentence-transformers'),
    below the positive, not positive * (1 - relative_margin), which would lie above it."""
    from maw_reranker.train.mining import MineOptions, select_negatives

    opts = MineOptions(dataset="x", output_run="o.run", relative_margin=0.5, num_negatives=10)
    ranked = [("a", -1.0), ("b", -2.5), ("c", -3.0), ("d", -4.0)]
    kept, why = select_negatives(ranked, {}, [-2.0], opts)
    assert [d for d, _ in kept] == ["c", "d"] and why["relative_margin"] == 2


def test_cross_encoder_with_a_real_tiny_model(tmp_path, task):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

    model = tiny_model_dir(tmp_path / "m")
    run, meta = _mine(tmp_path, task, candidates=str(task["run"]), miner="cross-encoder", model=str(model),
                      max_length=32, neg_rank_max=10, num_negatives=4, margin=0.0, maw=None)
    texts = {d: t for t, d in _doc_texts(task).items()}
    encoder = CrossEncoderWithMAW.from_pretrained(str(model), maw=None, max_length=32)
    queries = {"q0": "apple story", "q1": "river story"}
    for qid, hits in run.items():
        docs = list(hits)
        expected = encoder.predict([(queries[qid], texts[d]) for d in docs])
        assert [hits[d] for d in docs] == pytest.approx([float(s) for s in expected], abs=1e-4)
        positive = float(encoder.predict([(queries[qid], texts[f"d{qid[1:]}_0"])])[0])
        assert all(s <= positive + 1e-4 for s in hits.values())  # nothing above the positive (margin 0)
    assert meta["settings"]["miner"] == "cross-encoder" and meta["counts"]["negatives"] == sum(map(len, run.values()))


def test_cross_encoder_needs_the_candidates_texts(tmp_path, monkeypatch):
    task = write_task(tmp_path / "t", n_queries=2, missing_doc="ghost-doc")
    model = tiny_model_dir(tmp_path / "m")
    with pytest.raises(MiningError, match="1 candidate documents of .*candidates.run are missing from the corpus: "
                                          "ghost-doc"):
        mine_negatives(_options(tmp_path, task, candidates=str(task["run"]), miner="cross-encoder", model=str(model),
                                neg_rank_max=100, max_length=32))
    assert not (tmp_path / "mined.run").exists()


# ---- end to end ----------------------------------------------------------------------------------------------

def test_mine_with_bm25_then_train_on_the_mined_run(tmp_path, monkeypatch):
    from maw_reranker.train import train
    from maw_reranker.train.data import GroupCollator
    from maw_reranker.train.sources import load_training_data

    task = write_task(tmp_path / "t")
    result = mine_negatives(_options(tmp_path, task, pool_engine="bm25s", pool_k=20, pools_dir=str(tmp_path / "pools"),
                                     neg_rank_min=2, neg_rank_max=10, num_negatives=2, margin=0.1))
    mined = read_run(result.output)
    assert mined and all(1 <= len(h) <= 2 for h in mined.values())
    opts = train_options(tmp_path, task, tiny_model_dir(tmp_path / "m"), candidates=str(result.output),
                         num_negatives=3, max_steps=2, batch_size=2)
    data = load_training_data(opts)
    assert data.description["negatives"] == str(result.output.resolve())
    assert {q: set(w) for q, w in data.source.windows.items() if w} == {q: set(h) for q, h in mined.items()}
    groups = []
    real_call = GroupCollator.__call__

    def recording(self, batch):
        groups.extend(batch)
        return real_call(self, batch)

    monkeypatch.setattr(GroupCollator, "__call__", recording)
    out = train(opts)
    assert out.steps == 2 and Path(out.final_model).is_dir()
    assert len(groups) == 4
    for group in groups:
        assert set(group.negs) <= set(mined[group.qid]), group  # only mined negatives (repeated when fewer)
        assert group.pos == f"d{int(group.qid[1:]) % 16}_0"
