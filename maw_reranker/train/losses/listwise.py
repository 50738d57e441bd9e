"""Listwise softmax cross-entropy over the group (the default).

When to use: the default for reranker fine-tuning with hard negatives (one positive, n negatives): it is the
cross-entropy of picking the positive among the whole group, so every negative competes at once and the gradient
concentrates on the hardest ones. Scores are only meaningful relative to each other within a query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def listwise_softmax_ce(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-log softmax(scores / temperature)[0]`` per group. ``[N, 1+n] -> [N]``."""
    logits = scores.float() / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]
