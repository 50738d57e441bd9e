"""Paired statistics checked against values computed by hand (closed forms, exact enumeration)."""

import math

import numpy as np
import pytest

from maw_reranker.evaluate.significance import (
    AlignmentError,
    align,
    bootstrap_ci,
    cohens_dz,
    compare_paired,
    holm_bonferroni,
    paired_ttest,
    wilcoxon_test,
)

BASE = {f"q{i}": 0.0 for i in range(1, 6)}
CAND = {f"q{i}": float(i) for i in range(1, 6)}  # diffs [1, 2, 3, 4, 5]


def t4_two_sided_p(t: float) -> float:
    """Closed-form CDF of Student's t with 4 degrees of freedom."""
    s = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * (t / math.sqrt(s)) * (1 - t * t / (12 * s))
    return 2 * (1 - cdf)


def test_ttest_hand_computed():
    # mean 3, sd sqrt(2.5), se sqrt(2.5)/sqrt(5) -> t = 3 / sqrt(0.5)
    t, p = paired_ttest(list(BASE.values()), list(CAND.values()))
    assert t == pytest.approx(3 / math.sqrt(0.5))
    assert p == pytest.approx(t4_two_sided_p(3 / math.sqrt(0.5)), rel=1e-9)
    assert p == pytest.approx(0.013236, abs=1e-6)
    t_neg, p_neg = paired_ttest(list(CAND.values()), list(BASE.values()))
    assert t_neg == pytest.approx(-t) and p_neg == pytest.approx(p)


def test_wilcoxon_exact_hand_computed():
    # All five ranks positive: W- = 0; exact two-sided p = 2 * P(W <= 0) = 2 / 2^5.
    w, p = wilcoxon_test([0] * 5, [1, 2, 3, 4, 5])
    assert w == 0.0 and p == pytest.approx(2 / 32)
    # diffs [1, -2, 3, 4]: W- = 2; subsets of {1,2,3,4} with rank sum <= 2 are {}, {1}, {2} -> p = 2 * 3/16.
    w, p = wilcoxon_test([0] * 4, [1, -2, 3, 4])
    assert w == 2.0 and p == pytest.approx(2 * 3 / 16)


def test_wilcoxon_zero_differences():
    # zero_method="wilcox" drops the zero differences: same as diffs [1..5].
    _, p = wilcoxon_test([0] * 7, [0, 0, 1, 2, 3, 4, 5], zero_method="wilcox")
    assert p == pytest.approx(2 / 32)
    assert wilcoxon_test([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    assert paired_ttest([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)


def test_wilcoxon_normal_approximation_and_zero_method():
    # 3 zeros + 14 non-zero diffs (|d| = 1..14, d = -2 the only negative): with zeros and n > 13 scipy uses the
    # normal approximation (scipy's default: no continuity correction), where zero_method matters. "wilcox" drops the zeros:
    # n = 14, W+ = 105 - 2 = 103, mean 14*15/4 = 52.5, var 14*15*29/24 = 253.75.
    diffs = [0, 0, 0] + [-2 if k == 2 else k for k in range(1, 15)]
    z = (103 - 52.5) / math.sqrt(253.75)
    w, p = wilcoxon_test([0] * len(diffs), diffs, zero_method="wilcox")
    assert w == 2.0 and p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    _, p_pratt = wilcoxon_test([0] * len(diffs), diffs, zero_method="pratt")
    assert p_pratt != pytest.approx(p, rel=1e-6)


def test_cohens_dz():
    assert cohens_dz([0] * 5, [1, 2, 3, 4, 5]) == pytest.approx(3 / math.sqrt(2.5))
    assert cohens_dz([1, 1], [1, 1]) == 0.0
    assert cohens_dz([0, 0], [1, 1]) == math.inf
    assert math.isnan(cohens_dz([0], [1]))


def test_bootstrap_exact_small_case():
    # diffs {0,3,6}: resampled means are k in {0..6} with counts 1,3,6,7,6,3,1 / 27; P(0) = P(6) = 1/27 > 2.5%,
    # so the 2.5% and 97.5% percentiles are exactly 0 and 6.
    assert bootstrap_ci([0, 3, 6], n_resamples=20000, seed=1) == (0.0, 6.0)
    # constant differences: a degenerate interval at that constant
    assert bootstrap_ci([0.25] * 10, n_resamples=500) == pytest.approx((0.25, 0.25))


def test_bootstrap_matches_normal_theory_and_is_seeded():
    d = np.random.default_rng(7).normal(0.05, 0.2, size=400)
    low, high = bootstrap_ci(d, n_resamples=4000, seed=3)
    half = 1.959964 * d.std(ddof=0) / math.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert bootstrap_ci(d, n_resamples=4000, seed=3) == (low, high)
    assert bootstrap_ci(d, n_resamples=4000, seed=4) != (low, high)
    with pytest.raises(ValueError):
        bootstrap_ci(d, confidence=1.5)


def test_holm_hand_computed():
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max(0.06, 0.04) = 0.06
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_bonferroni({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # capped at 1
    out = holm_bonferroni([0.01, float("nan"), 0.04])  # NaN not in the family: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm_bonferroni([]) == []


def test_align_names_mismatched_ids():
    with pytest.raises(AlignmentError, match=r"only in baseline: q9.*only in candidate: q7"):
        align({"q1": 1.0, "q9": 1.0}, {"q1": 1.0, "q7": 1.0})
    qids, a, b = align({"b": 2.0, "a": 1.0}, {"a": 10.0, "b": 20.0})
    assert qids == ["a", "b"] and list(a) == [1.0, 2.0] and list(b) == [10.0, 20.0]


def test_compare_paired_bundle():
    c = compare_paired(BASE, CAND, n_resamples=2000, seed=0)
    assert c.n == 5 and c.mean_diff == pytest.approx(3.0) and c.mean_candidate == pytest.approx(3.0)
    assert c.ttest_p == pytest.approx(0.013236, abs=1e-6)
    assert c.wilcoxon_p == pytest.approx(0.0625) and c.wilcoxon_zero_method == "wilcox"
    assert c.cohens_dz == pytest.approx(1.897367, abs=1e-6)
    assert 1.0 <= c.ci_low < 3.0 < c.ci_high <= 5.0
    assert set(c.to_dict()) >= {"ttest_p", "wilcoxon_p", "ci_low", "ci_high", "cohens_dz"}
