"""Run folder writer."""

import json

import pytest

from maw_reranker.data.trec import read_run
from maw_reranker.evaluate.artifacts import COMPLETE_MARKER, RunArtifacts
from maw_reranker.evaluate.metrics import evaluate_run


def test_run_folder_round_trip(tmp_path):
    art = RunArtifacts.for_run(tmp_path, "msmarco-dev", "maw-gated", 2)
    assert art.output_dir == tmp_path / "msmarco-dev" / "maw-gated" / "seed_2"
    assert not art.is_complete()
    art.write_config({"variant": "maw-gated"})
    run = {"q1": {"d1": 2.5, "d2": 1.25}, "q2": {"d3": 0.5}}
    art.write_run(run)
    result = evaluate_run(run, {"q1": {"d2": 1}, "q2": {"d3": 1}}, ["RR@10"])
    art.write_metrics(result)
    art.write_scores([
        {"qid": "q1", "docid": "d1", "score": 2.5, "first_stage_rank": 2, "first_stage_score": 11.0},
        ("q1", "d2", 1.25, 1, 12.5),
        ("q2", "d3", 0.5),
    ])
    depth_rows = [{"qid": "q1", "docid": "d1", "layers": {"11": {"weights": [0.2, 0.8], "selected": 1}}}]
    art.write_depth_log(depth_rows)
    art.mark_complete({"n_pairs": 3})
    assert art.is_complete()

    assert read_run(art.path("run.trec")) == run
    assert json.loads(art.path("metrics.json").read_text()) == {"RR@10": pytest.approx(0.75)}
    assert json.loads(art.path("per_query.json").read_text()) == {"RR@10": {"q1": 0.5, "q2": 1.0}}
    assert json.loads(art.path("config.json").read_text())["config"] == {"variant": "maw-gated"}
    lines = art.path("scores.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["qid", "docid", "score", "first_stage_rank", "first_stage_score"]
    assert lines[1].split("\t") == ["q1", "d1", "2.5", "2", "11.0"]
    assert lines[3].split("\t") == ["q2", "d3", "0.5", "", ""]
    assert [json.loads(x) for x in art.path("depth_log.jsonl").read_text().splitlines()] == depth_rows
    marker = json.loads(art.path(COMPLETE_MARKER).read_text())
    assert marker["n_pairs"] == 3 and "run.trec" in marker["files"] and COMPLETE_MARKER not in marker["files"]

    # a later write (a rerun started) makes the marker stale
    art.write_run(run)
    assert not art.is_complete()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="folder name"):
        RunArtifacts.for_run(tmp_path, "ds", "../escape", 0)
    art = RunArtifacts(tmp_path / "r")
    with pytest.raises(ValueError, match="tab or newline"):
        art.write_scores([("q\t1", "d1", 1.0)])
    with pytest.raises(ValueError, match="needs qid, docid and score"):
        art.write_scores([{"qid": "q1", "docid": "d1"}])
    assert not (tmp_path / "r" / "scores.tsv").exists()  # atomic: nothing half-written
