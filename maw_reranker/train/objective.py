"""The per-batch training objective: ranking loss, plus the router's oracle cross-entropy or the GRPO policy loss.

Returns the scalar to backpropagate and a dict of detached values to log (router losses are logged separately
from the ranking loss, as the issue asks). With a distillation loss, the batch's teacher scores arrive as
``features["teacher_scores"]`` (``[groups, 1 + n]``, added by the trainer) and are bound to the loss for the batch,
so the router oracle and GRPO use the same loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from maw_reranker.maw.config import MAWConfig
from maw_reranker.train.losses import DISTILLATION_LOSSES, get_loss
from maw_reranker.train.routing import grpo_step, oracle_depths, router_oracle_loss, routing_gates


class Objective:
    def __init__(self, opts, maw: Optional[MAWConfig]):
        self.distill = opts.loss in DISTILLATION_LOSSES
        self.loss_fn = None if self.distill else get_loss(opts.loss, margin=opts.margin, temperature=opts.temperature)
        self.group_size = opts.group_size
        self.mode = maw.gating_mode if maw is not None else None
        self.depth = maw.depth_dim if maw is not None else 0
        self.opts = opts

    def __call__(self, model, unwrapped, features: dict, step: int) -> tuple[torch.Tensor, dict]:
        """``model`` is what the accelerator prepared (DDP in multi-process runs); ``unwrapped`` is the module
        whose MAW layers are read and controlled."""
        groups = features["input_ids"].shape[0] // self.group_size
        o = self.opts
        features = dict(features)
        teacher = features.pop("teacher_scores", None)
        loss_fn = get_loss(o.loss, o.margin, o.temperature, teacher=teacher) if self.distill else self.loss_fn
        if self.mode == "grpo":
            out = grpo_step(model, features, groups, self.group_size, loss_fn, o.grpo_group_size, o.grpo_beta,
                            o.grpo_eta, o.grpo_eps, gates=routing_gates(unwrapped, ("grpo",)))
            total = out["rank"] + o.grpo_weight * out["loss"]
            logs = {"loss/rank": out["rank"], "loss/grpo": out["loss"], "grpo/policy": out["policy"],
                    "grpo/kl": out["kl"], "grpo/entropy": out["entropy"], "grpo/reward": out["reward"],
                    "grpo/reward_std": out["reward_std"]}
            return total, {k: v.detach() for k, v in logs.items()}
        oracle = None
        if self.mode == "router" and o.router_oracle_weight > 0 and step % o.oracle_every == 0:
            oracle = oracle_depths(unwrapped, features, groups, self.group_size, self.depth, loss_fn)
        scores = model(**features).float().view(groups, self.group_size)
        rank = loss_fn(scores).mean()
        logs = {"loss/rank": rank.detach()}
        if oracle is None:
            return rank, logs
        ce, agreement = router_oracle_loss(routing_gates(unwrapped, ("router",)), oracle, self.group_size)
        logs.update({"loss/router_oracle": ce.detach(), "router/oracle_agreement": agreement})
        return rank + o.router_oracle_weight * ce, logs
