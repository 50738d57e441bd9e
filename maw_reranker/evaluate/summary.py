"""Per-dataset suite summary: mean +/- std over seeds, and paired statistics of every variant against a baseline.

Input is either in memory (``summarize``: variant -> seed -> EvalResult-like) or a finished suite tree
``<root>/<dataset>/<variant>/seed_<n>/{metrics.json, per_query.json}`` (``load_suite``). Per-query values entering
the paired tests are, for each variant, the mean over its seeds of each query's value; the Holm family is every
(variant, measure) comparison on the dataset, adjusted separately for the t-test and for the Wilcoxon test.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from maw_reranker.evaluate.significance import compare_paired, holm_bonferroni
from maw_reranker.utils.io import atomic_write, write_json

logger = logging.getLogger(__name__)

SEED_DIR = re.compile(r"^seed_(\S+)$")


class SummaryError(ValueError):
    """The results cannot be summarised as asked (missing baseline, mismatched measures or queries)."""


def _parts(result: Any) -> tuple[Mapping[str, float], Mapping[str, Mapping[str, float]]]:
    """Accept an EvalResult, or a dict with 'aggregate' (or 'metrics') and 'per_query'."""
    if hasattr(result, "aggregate") and hasattr(result, "per_query"):
        return result.aggregate, result.per_query
    if isinstance(result, Mapping) and "per_query" in result:
        agg = result.get("aggregate", result.get("metrics"))
        if agg is not None:
            return agg, result["per_query"]
    raise SummaryError(f"not an EvalResult-like object (needs aggregate and per_query): {type(result).__name__}")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, float)
    # Sample std (n-1) over seeds; undefined for a single seed, reported as None rather than a misleading 0.
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _per_query_mean_over_seeds(variant: str, measure: str, seeds: Mapping[str, Any]) -> dict[str, float]:
    per_seed = {seed: _parts(res)[1].get(measure) for seed, res in seeds.items()}
    missing = [s for s, v in per_seed.items() if v is None]
    if missing:
        raise SummaryError(f"variant {variant!r}: seeds {missing} have no per-query values for {measure!r}")
    qid_sets = {s: set(v) for s, v in per_seed.items()}
    reference_seed, reference = next(iter(qid_sets.items()))
    for seed, qids in qid_sets.items():
        if qids != reference:
            diff = sorted(qids ^ reference)[:10]
            raise SummaryError(
                f"variant {variant!r}, {measure}: seed {seed} and seed {reference_seed} cover different queries "
                f"(e.g. {diff}); cannot average per-query values over seeds"
            )
    return {q: float(np.mean([per_seed[s][q] for s in per_seed])) for q in sorted(reference)}


def summarize(
    results: Mapping[str, Mapping[Any, Any]],
    baseline: str,
    measures: list[str] | None = None,
    *,
    dataset: str | None = None,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    zero_method: str = "wilcox",
    alpha: float = 0.05,
) -> dict:
    """Summarise ``results[variant][seed]`` (EvalResult-like) against ``baseline``; returns a JSON-ready dict."""
    results = {v: {str(s): r for s, r in seeds.items()} for v, seeds in results.items() if seeds}
    if baseline not in results:
        raise SummaryError(f"baseline variant {baseline!r} has no results; variants: {sorted(results)}")
    if measures is None:
        first = next(iter(results[baseline].values()))
        measures = list(_parts(first)[0])
    for variant, seeds in results.items():
        for s, res in seeds.items():
            lacking = [m for m in measures if m not in _parts(res)[0]]
            if lacking:
                raise SummaryError(f"variant {variant!r}, seed {s}: no value for measures {lacking}")

    variants_out: dict[str, dict] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for variant, seeds in results.items():
        metrics = {}
        for m in measures:
            values = {s: float(_parts(r)[0][m]) for s, r in seeds.items()}
            mean, std = _mean_std(list(values.values()))
            metrics[m] = {"mean": mean, "std": std, "per_seed": values}
        variants_out[variant] = {"seeds": list(seeds), "n_seeds": len(seeds), "metrics": metrics}
        per_query[variant] = {m: _per_query_mean_over_seeds(variant, m, seeds) for m in measures}

    comparisons: dict[str, dict[str, dict]] = {}
    for variant in results:
        if variant == baseline:
            continue
        comparisons[variant] = {}
        for m in measures:
            try:
                comp = compare_paired(
                    per_query[baseline][m], per_query[variant][m],
                    n_resamples=n_resamples, confidence=confidence, seed=seed, zero_method=zero_method,
                )
            except ValueError as exc:
                raise SummaryError(f"{variant!r} vs baseline {baseline!r}, {m}: {exc}") from None
            comparisons[variant][m] = comp.to_dict()

    # Holm family: all (variant, measure) comparisons on this dataset, once per test.
    for test in ("ttest", "wilcoxon"):
        raw = {(v, m): c[f"{test}_p"] for v, ms in comparisons.items() for m, c in ms.items()}
        adjusted = holm_bonferroni(raw)
        for (v, m), p in adjusted.items():
            comparisons[v][m][f"{test}_p_holm"] = p
            comparisons[v][m][f"{test}_significant"] = bool(not math.isnan(p) and p < alpha)

    return {
        "dataset": dataset,
        "baseline": baseline,
        "measures": list(measures),
        "variants": variants_out,
        "comparisons": comparisons,
        "settings": {
            "alpha": alpha,
            "confidence": confidence,
            "n_resamples": n_resamples,
            "bootstrap_seed": seed,
            "wilcoxon_zero_method": zero_method,
            "holm_family_size": sum(len(ms) for ms in comparisons.values()),
        },
        "notes": [
            "Scores: mean and sample standard deviation (n-1) over seeds of each run's aggregate value.",
            "Paired tests use per-query values; each query's value is the mean over that variant's seeds.",
            "Difference = variant - baseline.",
            "t-test: paired Student t-test (scipy.stats.ttest_rel), two-sided.",
            f"Wilcoxon: Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero_method={zero_method!r}), two-sided.",
            f"CI: paired percentile bootstrap ({n_resamples} resamples of queries, seed {seed}) of the mean difference.",
            "d_z: Cohen's d_z = mean difference / sd of differences (n-1).",
            "Holm: Holm-Bonferroni step-down adjustment over all variant x measure comparisons, per test.",
        ],
    }


def _fmt(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _fmt_p(p: float | None, significant: bool) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    text = "<0.0001" if p < 1e-4 else f"{p:.4f}"
    return text + ("*" if significant else "")


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(summary: Mapping) -> str:
    """A readable Markdown report: a scores table (one row per variant) and a detailed comparison table."""
    measures, baseline, settings = summary["measures"], summary["baseline"], summary["settings"]
    title = f"# Summary: {summary['dataset']}" if summary.get("dataset") else "# Summary"
    lines = [title, "", f"Baseline: `{baseline}`. Holm-adjusted significance level: {settings['alpha']}.", ""]

    header = ["variant", "seeds"]
    for m in measures:
        header += [m, f"{m} Δ (t-test p / Wilcoxon p)"]
    lines += ["| " + " | ".join(map(_esc, header)) + " |", "|" + "---|" * len(header)]
    for variant, info in summary["variants"].items():
        label = f"{variant} (baseline)" if variant == baseline else variant
        row = [label, str(info["n_seeds"])]
        for m in measures:
            stat = info["metrics"][m]
            row.append(_fmt(stat["mean"]) + (f" ± {_fmt(stat['std'])}" if stat["std"] is not None else ""))
            comp = summary["comparisons"].get(variant, {}).get(m)
            if comp is None:
                row.append("—")
            else:
                row.append(
                    f"{_fmt(comp['mean_diff'], signed=True)} (t: {_fmt_p(comp['ttest_p'], comp['ttest_significant'])}"
                    f" / W: {_fmt_p(comp['wilcoxon_p'], comp['wilcoxon_significant'])})"
                )
        lines.append("| " + " | ".join(map(_esc, row)) + " |")

    if summary["comparisons"]:
        conf = int(round(settings["confidence"] * 100))
        lines += ["", f"## Against `{baseline}`", ""]
        head = ["variant", "measure", "n queries", "Δ mean", f"{conf}% bootstrap CI", "d_z",
                "t-test p", "t-test p (Holm)", "Wilcoxon p", "Wilcoxon p (Holm)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for variant, per_measure in summary["comparisons"].items():
            for m, c in per_measure.items():
                lines.append("| " + " | ".join(map(_esc, [
                    variant, m, str(c["n"]), _fmt(c["mean_diff"], signed=True),
                    f"[{_fmt(c['ci_low'], signed=True)}, {_fmt(c['ci_high'], signed=True)}]",
                    _fmt(c["cohens_dz"], digits=3),
                    _fmt_p(c["ttest_p"], False), _fmt_p(c["ttest_p_holm"], c["ttest_significant"]),
                    _fmt_p(c["wilcoxon_p"], False), _fmt_p(c["wilcoxon_p_holm"], c["wilcoxon_significant"]),
                ])) + " |")

    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in summary["notes"]]
    lines.append(f"- `*`: Holm-adjusted p < {settings['alpha']} (family of {settings['holm_family_size']} comparisons "
                 "per test); in the first table the raw p is shown and the mark refers to its Holm-adjusted value.")
    lines.append("- std is omitted for variants with a single seed.")
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    # Strict JSON has no NaN/Infinity: write null for NaN, strings for infinities.
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_summary(summary: Mapping, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` atomically into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / "summary.json", output_dir / "summary.md"
    write_json(json_path, _json_safe(summary))
    with atomic_write(md_path) as handle:
        handle.write(render_markdown(summary))
    return json_path, md_path


def load_suite(dataset_dir: str | Path) -> dict[str, dict[str, dict]]:
    """Read ``<dataset_dir>/<variant>/seed_<n>/`` into variant -> seed -> {'aggregate', 'per_query'}.

    Seed folders lacking metrics.json or per_query.json (unfinished runs) are skipped with a warning.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"suite folder not found: {dataset_dir}")
    results: dict[str, dict[str, dict]] = {}
    for variant_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        seeds: dict[str, dict] = {}
        seed_dirs = [p for p in variant_dir.iterdir() if p.is_dir() and SEED_DIR.match(p.name)]
        # Numeric seeds in numeric order (seed_2 before seed_10), others after, by name.
        seed_dirs.sort(key=lambda p: (0, int(p.name[5:]), "") if p.name[5:].isdigit() else (1, 0, p.name))
        for seed_dir in seed_dirs:
            metrics_path, pq_path = seed_dir / "metrics.json", seed_dir / "per_query.json"
            if not (metrics_path.is_file() and pq_path.is_file()):
                logger.warning("skipping unfinished run %s (metrics.json or per_query.json missing)", seed_dir)
                continue
            try:
                aggregate = json.loads(metrics_path.read_text(encoding="utf-8"))
                pq = json.loads(pq_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise SummaryError(f"{seed_dir}: unreadable JSON ({exc})") from None
            seeds[SEED_DIR.match(seed_dir.name).group(1)] = {"aggregate": aggregate, "per_query": pq}
        if seeds:
            results[variant_dir.name] = seeds
    if not results:
        raise SummaryError(f"no finished runs (variant/seed_<n>/metrics.json) under {dataset_dir}")
    return results


def summarize_suite(dataset_dir: str | Path, baseline: str, measures: list[str] | None = None, **kwargs) -> dict:
    """Load a finished suite folder, summarise it and write summary.json / summary.md next to the variants."""
    dataset_dir = Path(dataset_dir)
    summary = summarize(load_suite(dataset_dir), baseline, measures, dataset=kwargs.pop("dataset", dataset_dir.name), **kwargs)
    write_summary(summary, dataset_dir)
    return summary
