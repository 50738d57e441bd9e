"""MarginMSE distillation (Hofstätter et al., 2020): match the teacher's score margins, not its scores.

When to use: teacher scores are available (a cross-encoder ensemble, a larger reranker) and the student should
reproduce how far apart the teacher puts the positive and each negative. Only margins are matched, so teacher and
student scores need not share a scale or an offset (e.g. a teacher's logits and a student's logits with another
bias). Each (positive, negative) margin is a separate regression target, so every negative counts, however easy.
"""

from __future__ import annotations

import torch


def margin_mse(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over negatives of ``((s_pos - s_neg) - (t_pos - t_neg))^2``. ``[N, 1+n], [N, 1+n] -> [N]``."""
    scores, teacher = scores.float(), teacher.float().to(scores.device)
    if teacher.shape != scores.shape:
        raise ValueError(f"teacher scores {tuple(teacher.shape)} do not match the group scores {tuple(scores.shape)}")
    student_margin = scores[:, :1] - scores[:, 1:]
    teacher_margin = teacher[:, :1] - teacher[:, 1:]
    return (student_margin - teacher_margin).pow(2).mean(dim=1)
