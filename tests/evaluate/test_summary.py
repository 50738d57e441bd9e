"""Suite summary: mean +/- std over seeds, per-query means over seeds, paired tests and Holm, from memory and disk."""

import json
import logging
import math

import pytest

from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.evaluate.metrics import EvalResult
from maw_reranker.evaluate.summary import (
    SummaryError,
    load_suite,
    render_markdown,
    summarize,
    summarize_suite,
    write_summary,
)

QIDS = ["q1", "q2", "q3", "q4", "q5"]


def result(agg: dict, pq: dict) -> EvalResult:
    return EvalResult(aggregate=agg, per_query=pq)


def suite():
    """Baseline and 'maw' (2 seeds each). For measure A the seed-mean per-query diffs are [1..5]/100 although each
    seed alone differs; measure B is identical for both variants."""
    base_a = {q: 0.5 for q in QIDS}
    maw_s0 = {q: 0.5 + 0.02 * i for i, q in enumerate(QIDS, 1)}  # diffs 2i/100
    maw_s1 = {q: 0.5 for q in QIDS}  # diffs 0  -> mean over seeds: i/100
    b = {q: 0.3 for q in QIDS}
    return {
        "base": {0: result({"A": 0.5, "B": 0.3}, {"A": base_a, "B": b}),
                 1: result({"A": 0.7, "B": 0.3}, {"A": base_a, "B": b})},
        "maw": {0: result({"A": 0.56, "B": 0.3}, {"A": maw_s0, "B": b}),
                1: result({"A": 0.50, "B": 0.3}, {"A": maw_s1, "B": b})},
    }


def test_summary_values_hand_computed():
    s = summarize(suite(), baseline="base", measures=["A", "B"], n_resamples=2000, dataset="toy")
    base_a = s["variants"]["base"]["metrics"]["A"]
    assert base_a["mean"] == pytest.approx(0.6) and base_a["std"] == pytest.approx(math.sqrt(0.02))
    assert s["variants"]["maw"]["metrics"]["A"]["mean"] == pytest.approx(0.53)
    assert set(s["comparisons"]) == {"maw"}  # the baseline is not compared with itself
    a, b = s["comparisons"]["maw"]["A"], s["comparisons"]["maw"]["B"]
    # per-query values are seed means -> diffs [0.01..0.05] -> same t and Wilcoxon as diffs [1..5]
    assert a["mean_diff"] == pytest.approx(0.03)
    assert a["ttest_p"] == pytest.approx(0.0132356, abs=1e-6)
    assert a["wilcoxon_p"] == pytest.approx(0.0625)
    assert a["cohens_dz"] == pytest.approx(3 / math.sqrt(2.5))
    assert b["ttest_p"] == 1.0 and b["wilcoxon_p"] == 1.0 and b["mean_diff"] == 0.0
    # Holm over the family {A, B}: sorted p -> [2 * p_A, max(2 * p_A, 1 * 1.0)]
    assert a["ttest_p_holm"] == pytest.approx(2 * a["ttest_p"])
    assert a["ttest_significant"] is True
    assert a["wilcoxon_p_holm"] == pytest.approx(0.125) and a["wilcoxon_significant"] is False
    assert b["ttest_p_holm"] == 1.0
    assert s["settings"]["holm_family_size"] == 2


def test_holm_family_spans_variants_and_measures():
    data = suite()
    data["other"] = data["maw"]
    s = summarize(data, baseline="base", measures=["A", "B"], n_resamples=200)
    p = s["comparisons"]["maw"]["A"]["ttest_p"]
    # four comparisons, two identical smallest p -> 4p, max(4p, 3p) = 4p
    assert s["comparisons"]["other"]["A"]["ttest_p_holm"] == pytest.approx(4 * p)
    assert s["settings"]["holm_family_size"] == 4


def test_markdown_readable():
    md = render_markdown(summarize(suite(), baseline="base", measures=["A", "B"], n_resamples=200, dataset="toy"))
    assert md.startswith("# Summary: toy")
    base_row = next(line for line in md.splitlines() if line.startswith("| base (baseline)"))
    assert "0.6000 ± 0.1414" in base_row
    maw_row = next(line for line in md.splitlines() if line.startswith("| maw |"))
    assert "+0.0300 (t: 0.0132* / W: 0.0625)" in maw_row  # t-test Holm p 0.026 < 0.05, Wilcoxon Holm 0.125 not
    assert "Wilcoxon signed-rank" in md and "ttest_rel" in md and "mean over that variant's seeds" in md
    assert "Holm" in md


def test_single_seed_has_no_std():
    data = {v: {0: seeds[0]} for v, seeds in suite().items()}
    s = summarize(data, baseline="base", measures=["A"], n_resamples=100)
    assert s["variants"]["base"]["metrics"]["A"]["std"] is None
    assert "| base (baseline) | 1 | 0.5000 |" in render_markdown(s)


def test_errors():
    data = suite()
    with pytest.raises(SummaryError, match="baseline variant 'nope'"):
        summarize(data, baseline="nope")
    with pytest.raises(SummaryError, match=r"no value for measures \['C'\]"):
        summarize(data, baseline="base", measures=["A", "C"])
    bad = suite()
    bad["maw"][1].per_query["A"] = {q: 0.5 for q in QIDS[:4]}  # seed 1 lacks q5
    with pytest.raises(SummaryError, match="cover different queries"):
        summarize(bad, baseline="base", measures=["A"])
    bad = suite()
    for res in bad["maw"].values():
        res.per_query["A"] = {("x" + q): v for q, v in res.per_query["A"].items()}
    with pytest.raises(SummaryError, match="only in baseline: q1"):
        summarize(bad, baseline="base", measures=["A"])


def test_from_disk_matches_memory(tmp_path, caplog):
    data = suite()
    for variant, seeds in data.items():
        for seed, res in seeds.items():
            art = RunArtifacts.for_run(tmp_path, "toy", variant, seed)
            art.write_metrics(res)
            art.mark_complete()
    (tmp_path / "toy" / "maw" / "seed_9").mkdir()  # an unfinished run: skipped with a warning
    with caplog.at_level(logging.WARNING):
        loaded = load_suite(tmp_path / "toy")
    assert "seed_9" in caplog.text
    assert sorted(loaded) == ["base", "maw"] and sorted(loaded["maw"]) == ["0", "1"]
    disk = summarize_suite(tmp_path / "toy", baseline="base", n_resamples=300)
    memory = summarize(data, baseline="base", n_resamples=300, dataset="toy")
    assert json.loads(json.dumps(disk)) == json.loads(json.dumps(memory))
    # strict JSON on disk (no NaN/Infinity tokens)
    text = (tmp_path / "toy" / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert (tmp_path / "toy" / "summary.md").read_text() == render_markdown(memory)


def test_write_summary_sanitises_non_finite(tmp_path):
    s = summarize(suite(), baseline="base", measures=["A"], n_resamples=100)
    s["comparisons"]["maw"]["A"]["cohens_dz"] = math.inf
    s["comparisons"]["maw"]["A"]["ci_low"] = math.nan
    json_path, md_path = write_summary(s, tmp_path / "out")
    stored = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert stored["comparisons"]["maw"]["A"]["cohens_dz"] == "inf"
    assert stored["comparisons"]["maw"]["A"]["ci_low"] is None
    assert "+inf" in md_path.read_text() and "[n/a," in md_path.read_text()


def test_missing_suite_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SummaryError, match="no finished runs"):
        load_suite(tmp_path / "empty")
