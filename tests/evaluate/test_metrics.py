"""ir_measures layer: hand-computed values on a tiny run, and the query-set policy (skips are logged, never silent)."""

import logging
import math

import pytest

from maw_reranker.evaluate.metrics import (
    EvalResult,
    MetricError,
    evaluate_run,
    measure_names,
    parse_measures,
    standard_measures,
)

# q1: relevant d2 (grade 1) at rank 2 and d3 (grade 2) at rank 3; q2: its only relevant doc d5 at rank 1.
RUN = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d5": 0.9, "d6": 0.1}}
QRELS = {"q1": {"d2": 1, "d3": 2, "d9": 0}, "q2": {"d5": 1}}

L3 = math.log2(3)
NDCG_Q1 = (1 / L3 + 2 / 2) / (2 / 1 + 1 / L3)  # trec_eval gain = grade, discount log2(rank + 1)


def test_ndcg_hand_computed():
    res = evaluate_run(RUN, QRELS, ["nDCG@10"])
    assert res.per_query["nDCG@10"]["q1"] == pytest.approx(NDCG_Q1, abs=1e-9)
    assert res.per_query["nDCG@10"]["q2"] == pytest.approx(1.0)
    assert res.aggregate["nDCG@10"] == pytest.approx((NDCG_Q1 + 1.0) / 2, abs=1e-9)
    assert NDCG_Q1 == pytest.approx(0.6199062, abs=1e-6)


def test_rr_success_ap_hand_computed():
    res = evaluate_run(RUN, QRELS, ["RR@10", "Success@1", "AP", "nDCG@1"])
    assert res.per_query["RR@10"] == pytest.approx({"q1": 0.5, "q2": 1.0})
    assert res.per_query["Success@1"] == pytest.approx({"q1": 0.0, "q2": 1.0})
    assert res.per_query["AP"]["q1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res.per_query["nDCG@1"]["q1"] == pytest.approx(0.0)
    assert res.aggregate["Success@1"] == pytest.approx(0.5)
    assert res.measures == ["RR@10", "Success@1", "AP", "nDCG@1"]
    assert res.n_queries == 2


def test_parse_measures_errors_and_duplicates():
    with pytest.raises(MetricError, match="nDGC@10"):
        parse_measures(["nDCG@10", "nDGC@10"])
    with pytest.raises(MetricError, match="nDCG@x"):
        parse_measures(["nDCG@x"])
    assert [str(m) for m in parse_measures(["nDCG@10", "nDCG@10", "RR@10"])] == ["nDCG@10", "RR@10"]
    assert measure_names(["ndcg_cut_10"]) == ["nDCG@10"]  # trec_eval spelling accepted
    with pytest.raises(MetricError):
        parse_measures([])


def test_standard_measures():
    names = standard_measures()
    assert len(names) == 15
    assert {"Success@1", "RR@5", "nDCG@10", "nDCG@100", "RR@1000", "Success@1000"} <= set(names)
    assert measure_names(names) == names  # all canonical and parseable


def test_unjudged_run_queries_skipped_and_logged(caplog):
    run = dict(RUN, q7={"d1": 1.0}, q8={"d1": 1.0})
    with caplog.at_level(logging.WARNING):
        res = evaluate_run(run, QRELS, ["nDCG@10"])
    assert res.skipped_unjudged == ["q7", "q8"]
    assert set(res.per_query["nDCG@10"]) == {"q1", "q2"}
    assert "2 run queries without qrels" in caplog.text and "q7" in caplog.text


def test_missing_queries_skip_versus_zero(caplog):
    qrels = dict(QRELS, q3={"d1": 1})
    with caplog.at_level(logging.WARNING):
        skip = evaluate_run(RUN, qrels, ["RR@10"])
    assert "absent from the run" in caplog.text and "q3" in caplog.text
    assert skip.missing_from_run == ["q3"]
    assert skip.aggregate["RR@10"] == pytest.approx((0.5 + 1.0) / 2)
    zero = evaluate_run(RUN, qrels, ["RR@10"], missing_queries="zero")
    assert zero.per_query["RR@10"]["q3"] == 0.0
    assert zero.aggregate["RR@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert zero.n_queries == 3
    with pytest.raises(MetricError, match="missing_queries"):
        evaluate_run(RUN, qrels, ["RR@10"], missing_queries="drop")


def test_bad_inputs_are_errors():
    with pytest.raises(MetricError, match="empty"):
        evaluate_run({}, QRELS, ["nDCG@10"])
    with pytest.raises(MetricError, match="mismatched"):
        evaluate_run({"x1": {"d1": 1.0}}, QRELS, ["nDCG@10"])
    with pytest.raises(MetricError, match="non-finite"):
        evaluate_run({"q1": {"d1": float("nan")}}, QRELS, ["nDCG@10"])


def test_empty_ranking_scores_zero_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        res = evaluate_run({"q1": {}, "q2": RUN["q2"]}, QRELS, ["nDCG@10", "RR@10"])
    assert res.per_query["nDCG@10"] == pytest.approx({"q1": 0.0, "q2": 1.0})
    assert res.aggregate["RR@10"] == pytest.approx(0.5)
    assert "empty ranking" in caplog.text


def test_eval_result_round_trip():
    res = evaluate_run(RUN, QRELS, ["nDCG@10"])
    again = EvalResult.from_dict(res.to_dict())
    assert again == res
