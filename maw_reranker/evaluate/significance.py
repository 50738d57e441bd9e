"""Paired significance tests on per-query values (scipy), a paired bootstrap CI, effect size and Holm correction.

Conventions (also in docs/evaluation.md):

* values are paired by query id; the two sides must cover exactly the same queries (else an error naming them);
* the difference is ``candidate - baseline``, so a positive mean difference means the candidate is better
  for "higher is better" measures;
* "t-test" = paired Student t-test, ``scipy.stats.ttest_rel`` (two-sided);
* "Wilcoxon" = Wilcoxon signed-rank test on the differences, ``scipy.stats.wilcoxon`` (two-sided); zero
  differences follow ``zero_method`` (default ``"wilcox"``: queries with a zero difference are dropped before
  ranking, the textbook and R default; ``"pratt"`` and ``"zsplit"`` are available). scipy's method="auto" gives
  the exact null distribution without ties/zeros (n <= 50), an exact sign-flip permutation test with ties/zeros
  and n <= 13, else the normal approximation without continuity correction (scipy's default; here zero_method
  changes the result);
* bootstrap = paired percentile bootstrap of the mean difference: queries are resampled with replacement
  (seeded numpy Generator), the CI is the (alpha/2, 1-alpha/2) percentiles of the resampled means;
* effect size = Cohen's d_z = mean(diff) / sd(diff) with the n-1 sd;
* if every difference is exactly 0, both p-values are 1.0 (no evidence of any difference) rather than NaN.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence, TypeVar

import numpy as np
from scipy import stats

K = TypeVar("K")


class AlignmentError(ValueError):
    """The two sides of a paired comparison do not cover the same queries."""


def align(baseline: Mapping[str, float], candidate: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pair values by query id (sorted); mismatched ids are an error that names them."""
    only_base = sorted(set(baseline) - set(candidate))
    only_cand = sorted(set(candidate) - set(baseline))
    if only_base or only_cand:
        def preview(ids):
            return ", ".join(map(str, ids[:10])) + (f", ... (+{len(ids) - 10} more)" if len(ids) > 10 else "")

        parts = []
        if only_base:
            parts.append(f"{len(only_base)} only in baseline: {preview(only_base)}")
        if only_cand:
            parts.append(f"{len(only_cand)} only in candidate: {preview(only_cand)}")
        raise AlignmentError("per-query values do not cover the same queries (" + "; ".join(parts) + ")")
    qids = sorted(baseline)
    a = np.array([float(baseline[q]) for q in qids], dtype=float)
    b = np.array([float(candidate[q]) for q in qids], dtype=float)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-query values must be finite")
    return qids, a, b


def paired_ttest(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``); returns (t, p). NaN when fewer than 2 pairs."""
    a, b = np.asarray(baseline, float), np.asarray(candidate, float)
    if len(a) < 2:
        return math.nan, math.nan
    if np.all(b - a == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant non-zero diffs: t = +-inf, p = 0 (scipy's limit)
        res = stats.ttest_rel(b, a)
    return float(res.statistic), float(res.pvalue)


def wilcoxon_test(baseline: Sequence[float], candidate: Sequence[float], zero_method: str = "wilcox") -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, method="auto"); returns (W, p)."""
    a, b = np.asarray(baseline, float), np.asarray(candidate, float)
    diff = b - a
    if len(diff) == 0:
        return math.nan, math.nan
    if np.all(diff == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on ties/zeros with the normal approximation
        res = stats.wilcoxon(diff, zero_method=zero_method, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def cohens_dz(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Cohen's d_z for paired data: mean(diff) / sd(diff, ddof=1). 0 when all diffs are 0, +-inf when sd is 0."""
    diff = np.asarray(candidate, float) - np.asarray(baseline, float)
    if len(diff) < 2:
        return math.nan
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def bootstrap_ci(
    diffs: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0, chunk: int = 1000
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (queries resampled with replacement)."""
    d = np.asarray(diffs, float)
    if len(d) == 0:
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunked so that (queries x resamples) index matrices stay small for large query sets.
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_baseline: float
    mean_candidate: float
    mean_diff: float  # candidate - baseline
    t_statistic: float
    ttest_p: float  # paired t-test, scipy.stats.ttest_rel
    wilcoxon_statistic: float
    wilcoxon_p: float  # Wilcoxon signed-rank, scipy.stats.wilcoxon
    wilcoxon_zero_method: str
    ci_low: float  # paired percentile bootstrap CI of mean_diff
    ci_high: float
    confidence: float
    n_resamples: int
    cohens_dz: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare_paired(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    zero_method: str = "wilcox",
) -> PairedComparison:
    """All paired statistics for one (baseline, candidate) pair of per-query value maps."""
    _, a, b = align(baseline, candidate)
    if len(a) == 0:
        raise AlignmentError("no queries to compare")
    t, tp = paired_ttest(a, b)
    w, wp = wilcoxon_test(a, b, zero_method=zero_method)
    low, high = bootstrap_ci(b - a, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return PairedComparison(
        n=len(a),
        mean_baseline=float(a.mean()),
        mean_candidate=float(b.mean()),
        mean_diff=float((b - a).mean()),
        t_statistic=t,
        ttest_p=tp,
        wilcoxon_statistic=w,
        wilcoxon_p=wp,
        wilcoxon_zero_method=zero_method,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_resamples=n_resamples,
        cohens_dz=cohens_dz(a, b),
    )


def holm_bonferroni(pvalues: Mapping[K, float] | Sequence[float]) -> dict[K, float] | list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), same shape as the input.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)).
    NaN p-values are not part of the family (m counts only the finite ones) and stay NaN.
    """
    if isinstance(pvalues, Mapping):
        keys = list(pvalues)
        values = [float(pvalues[k]) for k in keys]
    else:
        keys, values = None, [float(p) for p in pvalues]
    finite = [i for i, p in enumerate(values) if not math.isnan(p)]
    order = sorted(finite, key=lambda i: values[i])
    m = len(order)
    adjusted = [math.nan] * len(values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[i]))  # monotone step-down
        adjusted[i] = running
    return dict(zip(keys, adjusted)) if keys is not None else adjusted
