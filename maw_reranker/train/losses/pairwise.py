"""Pairwise losses: the positive against each negative of its group.

When to use: RankNet when only the order of pairs matters and negatives are noisy (each pair contributes a bounded,
smooth term); margin (hinge) when a score gap is wanted and easy pairs should stop contributing once separated.
Both are weaker than listwise softmax cross-entropy when a group has many negatives, since each pair is seen alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranknet_loss(scores: torch.Tensor) -> torch.Tensor:
    """RankNet: mean over negatives of ``-log sigmoid(s_pos - s_neg)``. ``[N, 1+n] -> [N]``."""
    scores = scores.float()
    diff = scores[:, :1] - scores[:, 1:]
    return F.softplus(-diff).mean(dim=1)  # softplus(-x) == -log(sigmoid(x)), stable for large |x|


def margin_loss(scores: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hinge: mean over negatives of ``max(0, margin - (s_pos - s_neg))``. ``[N, 1+n] -> [N]``."""
    scores = scores.float()
    diff = scores[:, :1] - scores[:, 1:]
    return F.relu(margin - diff).mean(dim=1)
