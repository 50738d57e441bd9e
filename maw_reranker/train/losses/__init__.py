"""Ranking losses over training groups.

Every loss takes group scores ``[N, 1 + n]`` (float32 logits; column 0 is the positive, the rest negatives) and
returns one loss per group ``[N]`` (no reduction): the trainer averages them, and GRPO uses them per group as
rewards. The distillation losses (:data:`DISTILLATION_LOSSES`) also take the teacher's scores of the same pairs,
``[N, 1 + n]``; :func:`get_loss` binds them, so every caller sees the same ``scores -> [N]`` function. Pick one
with :func:`get_loss`.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, get_args

import torch

from maw_reranker.train.losses.bce import pointwise_bce
from maw_reranker.train.losses.listwise import listwise_softmax_ce
from maw_reranker.train.losses.listwise_kl import listwise_kl
from maw_reranker.train.losses.margin_mse import margin_mse
from maw_reranker.train.losses.pairwise import margin_loss, ranknet_loss

GroupLoss = Callable[[torch.Tensor], torch.Tensor]
Loss = Literal["listwise", "bce", "ranknet", "margin", "margin_mse", "listwise_kl"]
LOSSES = get_args(Loss)
DISTILLATION_LOSSES = ("margin_mse", "listwise_kl")  # they need teacher scores


def get_loss(name: str, margin: float = 1.0, temperature: float = 1.0,
             teacher: Optional[torch.Tensor] = None) -> GroupLoss:
    """The per-group loss called ``name`` (one of :data:`LOSSES`) with its settings bound; a distillation loss
    also binds ``teacher`` (the teacher's scores of the batch's groups, ``[N, 1 + n]``)."""
    if name in DISTILLATION_LOSSES:
        if teacher is None:
            raise ValueError(f"loss {name!r} needs teacher scores (options teacher_run, teacher_model, or a score "
                             "column of an hf source)")
        if name == "margin_mse":
            return lambda scores: margin_mse(scores, teacher)
        return lambda scores: listwise_kl(scores, teacher, temperature=temperature)
    if name == "listwise":
        return lambda scores: listwise_softmax_ce(scores, temperature=temperature)
    if name == "bce":
        return pointwise_bce
    if name == "ranknet":
        return ranknet_loss
    if name == "margin":
        return lambda scores: margin_loss(scores, margin=margin)
    raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")


def check_group_scores(scores: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"group scores must be [groups, 1 + negatives] with at least one negative, got {tuple(scores.shape)}")


__all__ = ["DISTILLATION_LOSSES", "LOSSES", "Loss", "GroupLoss", "get_loss", "listwise_kl", "listwise_softmax_ce",
           "margin_loss", "margin_mse", "pointwise_bce", "ranknet_loss"]
