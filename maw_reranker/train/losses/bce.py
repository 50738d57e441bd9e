"""Pointwise binary cross-entropy.

When to use: the pretrained head was trained pointwise (the MS MARCO MiniLM cross-encoders were trained with BCE),
or calibrated scores matter (a threshold on sigmoid(score)); also the only loss whose scores are comparable across
queries. It ignores the relative order inside a group, so it usually ranks a little worse than listwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pointwise_bce(scores: torch.Tensor) -> torch.Tensor:
    """Per-group mean BCE with label 1 for column 0 (the positive) and 0 for the negatives. ``[N, 1+n] -> [N]``."""
    scores = scores.float()
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, labels, reduction="none").mean(dim=1)
