"""Router oracle supervision and the GRPO objective (docs/MAW.md section 3).

Conventions (stated because MAW.md leaves them open):

* A MAW policy acts per (query, document) pair: each pair of a group draws its own depth in every router/grpo
  layer. A group's *choice* is the vector of its pairs' draws, so ``log pi(choice)`` is the sum of their log
  probabilities over pairs and layers (the exact joint log-probability of independent draws).
* The oracle depth of a group is searched by forcing the same depth in every router layer for all of the group's
  pairs (``D`` forwards, eval mode so that dropout does not decide it); it supervises every router layer.
* The group std in the GRPO advantage is the population std over the ``G`` samples (``unbiased=False``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from maw_reranker.maw.patcher import maw_layers


def routing_gates(model: torch.nn.Module, modes=("router", "grpo")) -> list:
    """The ``DepthGating`` modules of MAW layers whose mode is in ``modes``, in layer order."""
    return [m.gating for m in maw_layers(model).values() if m.gating.mode in modes]


def set_forced_depth(gates, depth) -> None:
    for gate in gates:
        gate.forced_depth = depth


@torch.no_grad()
def oracle_depths(model: torch.nn.Module, features: dict, groups: int, group_size: int, depth: int,
                  loss_fn: Callable) -> torch.Tensor:
    """``[groups]`` index of the depth whose forced use gives the lowest ranking loss of each group."""
    gates = routing_gates(model, ("router",))
    # Each module's own flag is restored (a frozen prefix stays in eval mode), not model.train(was_training).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    pairs = groups * group_size
    device = features["input_ids"].device
    losses = []
    try:
        for d in range(depth):
            set_forced_depth(gates, torch.full((pairs,), d, dtype=torch.long, device=device))
            scores = model(**features).float().view(groups, group_size)
            losses.append(loss_fn(scores))
    finally:
        set_forced_depth(gates, None)
        for module, training in modes:
            module.training = training
    # argmin takes the first minimum: ties (e.g. identical depths at init) resolve to the lowest depth.
    return torch.stack(losses, dim=1).argmin(dim=1)


def router_oracle_loss(gates, oracle: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of each router layer's last logits towards its group's oracle depth, and the accuracy."""
    target = oracle.repeat_interleave(group_size)
    ce, agree = [], []
    for gate in gates:
        if gate.last_logits is None:
            raise RuntimeError("router logits were not recorded; run a forward pass first")
        ce.append(F.cross_entropy(gate.last_logits.float(), target))
        agree.append((gate.last_logits.argmax(-1) == target).float().mean())
    return torch.stack(ce).mean(), torch.stack(agree).mean().detach()


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages ``(r - mean_G r) / (std_G r + eps)`` for rewards ``[groups, G]`` (population std)."""
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def policy_regularizers(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean KL(pi || uniform), mean entropy H(pi)) of policies with logits ``[M, D]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    kl = (p * (logp + math.log(logits.shape[-1]))).sum(-1)  # sum p log(p / (1/D))
    return kl.mean(), entropy.mean()


def grpo_loss(advantages: torch.Tensor, log_probs: torch.Tensor, logits: list[torch.Tensor], beta: float,
              eta: float) -> dict[str, torch.Tensor]:
    """``-mean(adv * log pi(a)) + beta * KL(pi || uniform) - eta * H(pi)``; advantages are constants."""
    policy = -(advantages.detach() * log_probs).mean()
    kls, ents = zip(*(policy_regularizers(lg) for lg in logits))
    kl, entropy = torch.stack(kls).mean(), torch.stack(ents).mean()
    return {"loss": policy + beta * kl - eta * entropy, "policy": policy, "kl": kl, "entropy": entropy}


def repeat_features(features: dict, times: int) -> dict:
    """The batch repeated ``times`` times along dim 0 (G policy samples in one forward pass)."""
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in features.items()}


def grpo_step(model: torch.nn.Module, features: dict, groups: int, group_size: int, loss_fn: Callable,
              samples: int, beta: float, eta: float, eps: float, gates=None) -> dict[str, torch.Tensor]:
    """One GRPO objective on a batch: ``samples`` depth choices per group in one forward of the repeated batch.

    Returns the ranking loss (mean over samples; it trains backbone, head and other MAW parameters), the policy
    objective and what to log. Rewards are ``-loss`` of each group under each sampled choice.
    """
    gates = gates if gates is not None else routing_gates(model, ("grpo",))
    scores = model(**repeat_features(features, samples)).float().view(samples, groups, group_size)
    per_sample = torch.stack([loss_fn(scores[g]) for g in range(samples)], dim=1)  # [groups, G]
    rewards = -per_sample.detach()
    advantages = group_advantages(rewards, eps)
    log_probs = 0
    for gate in gates:
        if gate.last_log_prob is None:
            raise RuntimeError("grpo layer recorded no sampled actions (is the model in training mode?)")
        log_probs = log_probs + gate.last_log_prob.view(samples, groups, group_size).sum(-1).t()
    out = grpo_loss(advantages, log_probs, [g.last_logits for g in gates], beta, eta)
    out.update(rank=per_sample.mean(), reward=rewards.mean(), reward_std=rewards.std(dim=1, unbiased=False).mean())
    return out
