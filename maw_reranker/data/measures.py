"""The one parser of measure names, used for datasets' primary metrics, options and evaluation alike.

ir_measures names (``nDCG@10``, ``RR(rel=2)@10``) and trec_eval spellings (``ndcg_cut_10``) are accepted and
canonicalised to the ir_measures name, which keys every result.
"""

from __future__ import annotations

from typing import Iterable

import ir_measures


class MetricError(ValueError):
    """Bad measure name or unusable run/qrels; the message says what is wrong."""


def parse_measure(name) -> "ir_measures.Measure":
    if not isinstance(name, str):  # already an ir_measures measure object
        return name
    try:
        return ir_measures.parse_measure(name.strip())
    except Exception as exc:  # ir_measures raises NameError/ValueError/etc. with terse messages
        try:
            parsed = ir_measures.parse_trec_measure(name.strip())
            if len(parsed) == 1:
                return parsed[0]
        except Exception:
            pass
        raise MetricError(
            f"unknown or malformed measure {name!r} ({exc}); use ir_measures names such as "
            f"'nDCG@10', 'RR@10', 'Success@1', 'AP', 'R@1000', 'P(rel=2)@5'"
        ) from None


def parse_measures(names: Iterable) -> list:
    """Parse measure names into ir_measures objects, dropping duplicates (order kept); errors name the bad one."""
    if isinstance(names, str):
        names = [names]
    out, seen = [], set()
    for name in names:
        measure = parse_measure(name)
        if str(measure) not in seen:
            seen.add(str(measure))
            out.append(measure)
    if not out:
        raise MetricError("no measures given")
    return out


def measure_names(names: Iterable) -> list[str]:
    """Canonical names as they appear as keys of evaluation results."""
    return [str(m) for m in parse_measures(names)]


def check_measures(names: Iterable, option: str = "measures") -> list[str]:
    """Canonical names of an option's measures, checked now rather than after an hour of reranking."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise MetricError(f"option '{option}' is empty; give at least one measure such as nDCG@10")
    try:
        return measure_names(names)
    except MetricError as exc:
        raise MetricError(f"option '{option}': {exc}") from None
