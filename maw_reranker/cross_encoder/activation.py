"""The ``activation`` of ``predict`` (``CrossEncoderWithMAW`` and ``CachedScorer``): one check, one mapping."""

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


__all__ = ["ACTIVATIONS", "check_activation", "apply_activation"]
