"""Listwise KL distillation: the student's softmax over the group towards the teacher's.

When to use: teacher scores for every document of the group, and the whole ranking of the group matters (not just
the positive against each negative): ``KL(softmax(t / T) || softmax(s / T))`` per group. Like MarginMSE it is
invariant to a shift of either score list; unlike MarginMSE it is not invariant to their scale, which the
temperature ``T`` (option ``temperature``) sets: a higher ``T`` flattens the teacher's distribution and passes on
more of its order among the negatives. Not multiplied by ``T^2``: at ``T = 1`` it is the plain KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def listwise_kl(scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(scores / T))`` per group. ``[N, 1+n], [N, 1+n] -> [N]``."""
    scores, teacher = scores.float(), teacher.float().to(scores.device)
    if teacher.shape != scores.shape:
        raise ValueError(f"teacher scores {tuple(teacher.shape)} do not match the group scores {tuple(scores.shape)}")
    log_student = F.log_softmax(scores / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=1)
