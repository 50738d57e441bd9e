"""What ``predict`` takes and gives back (``CrossEncoderWithMAW`` and ``CachedScorer``), as sentence-transformers'
``CrossEncoder.predict``: one pair or many; ``activation`` None = logits (the ranking is the same either way), or
``"sigmoid"``, sentence-transformers' default for one-label models, to map them to (0, 1)."""

from __future__ import annotations

import numpy as np

ACTIVATIONS = (None, "sigmoid")


def check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'sigmoid', got {activation!r}")


def apply_activation(scores: np.ndarray, activation: str | None) -> np.ndarray:
    """``scores`` (logits) unchanged for None, mapped to (0, 1) for ``"sigmoid"``."""
    check_activation(activation)
    if activation is None:
        return scores
    with np.errstate(over="ignore"):  # exp of a large negative logit overflows to inf: the sigmoid is 0
        return 1.0 / (1.0 + np.exp(-scores))


def is_one_pair(pairs) -> bool:
    """``("query", "document")``: one pair (scored as one), not a list of pairs."""
    return isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs)


__all__ = ["ACTIVATIONS", "check_activation", "apply_activation", "is_one_pair"]
