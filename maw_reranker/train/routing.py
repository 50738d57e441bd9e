"""Router oracle supervision and the GRPO objective (docs/MAW.md section 3).

Conventions (stated because MAW.md leaves them open):

* A MAW policy acts per (query, document) pair: each pair of a group draws its own depth in every router/grpo
  layer. A group's *choice* is the vector of its pairs' draws, so ``log pi(choice)`` is the sum of their log
  probabilities over pairs and layers (the exact joint log-probability of independent draws).
* The oracle depth of a group is searched by forcing the same depth in every router layer for all of the group's
  pairs (eval mode so that dropout does not decide it); it supervises every router layer. The ``D`` forced depths
  are evaluated as one batched pass: the batch replicated ``D`` times (depth-major), each copy with its own forced
  depth (``forced_depth`` is per example), one forward, the losses split per depth.
* Memory: a replicated batch (``D`` or ``G`` copies) of more than ``max_rows`` rows (default
  :data:`MAX_REPLICATED_ROWS`) runs in chunks of whole copies, so peak activations stay about those of
  ``max_rows`` rows (GRPO keeps every chunk's graph for the one backward; its chunks bound the transient memory).
  On a CPU the oracle and GRPO default to one copy per forward (:data:`CPU_REPLICATED_ROWS`, measured faster there).
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


def set_repeated_inputs(gates, repeated: bool) -> None:
    """Tell ``gates`` whether the coming passes repeat their inputs (see ``DepthGating.repeated_inputs``)."""
    for gate in gates:
        gate.repeated_inputs = bool(repeated)


def _release_memos(model: torch.nn.Module) -> None:
    """Drop what the MAW layers kept across forced or repeated passes (nothing of it outlives those passes)."""
    if isinstance(model, torch.nn.Module):  # a plain callable has no MAW layers
        for layer in maw_layers(model).values():
            layer.release_memos()


def set_forced_depth(gates, depth, logits: bool = True) -> None:
    """Force ``depth`` (``[B]``, or None to stop) in ``gates``; ``logits``: whether the forced passes still compute
    the statistics and policy logits (see ``DepthGating``)."""
    for gate in gates:
        gate.forced_depth = depth
        gate.forced_logits = logits


#: Rows of a replicated batch (the oracle's ``D`` copies, GRPO's ``G`` samples) run in one forward; above it, chunks
#: of whole copies (at least one copy per chunk).
MAX_REPLICATED_ROWS = 512
#: The default of the oracle and of GRPO on a CPU: one copy per forward. Measured there (``bench_prefix_cache.py
#: --maw-cost``, 2 cores, MiniLM-L12 top layer, D=8), one batched pass of the D copies was slower than D passes (16.3
#: vs 12.4 s a step at 64 pairs, 3.2 vs 2.8 s at 16), and GRPO's G=2 samples too (3.06 vs 2.28 s a step at 64 pairs):
#: a CPU gains nothing from larger matrices and loses cache locality.
CPU_REPLICATED_ROWS = 1


def _replicated_rows(max_rows: int | None, device: torch.device) -> int | None:
    """``max_rows`` as given, else :data:`CPU_REPLICATED_ROWS` on a CPU (None: :data:`MAX_REPLICATED_ROWS`)."""
    return CPU_REPLICATED_ROWS if max_rows is None and device.type == "cpu" else max_rows


def copies_per_chunk(copies: int, rows_per_copy: int, max_rows: int | None = None) -> int:
    """How many of ``copies`` replicas of a ``rows_per_copy``-row batch one forward takes (at least 1)."""
    max_rows = MAX_REPLICATED_ROWS if max_rows is None else int(max_rows)
    return max(1, min(copies, max_rows // max(1, rows_per_copy)))


@torch.no_grad()
def forced_depth_losses(model: torch.nn.Module, features: dict, groups: int, group_size: int, depth: int,
                        loss_fn: Callable, max_rows: int | None = None) -> torch.Tensor:
    """``[groups, depth]`` ranking loss of each group with depth ``d`` forced in every router layer (eval mode).

    The ``depth`` forced passes run as one forward of the batch replicated ``depth`` times (chunked above
    ``max_rows`` rows; default :data:`MAX_REPLICATED_ROWS`, on a CPU :data:`CPU_REPLICATED_ROWS`); equal to ``depth``
    separate forwards to float tolerance."""
    gates = routing_gates(model, ("router",))
    # Each module's own flag is restored (a frozen prefix stays in eval mode), not model.train(was_training).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    pairs = groups * group_size
    device = features["input_ids"].device
    per_chunk = copies_per_chunk(depth, pairs, _replicated_rows(max_rows, device))
    losses = []
    try:
        for first in range(0, depth, per_chunk):
            depths = torch.arange(first, min(depth, first + per_chunk), device=device)
            # copy c forces depth first + c; its statistics and router logits would go unused (the oracle needs
            # only the losses), and without them each example's attention is computed at its forced depth alone
            set_forced_depth(gates, depths.repeat_interleave(pairs), logits=False)
            for gate in gates:  # the copies' q, k, v and O_orig are made once where their inputs are equal
                gate.replicas = len(depths)
            scores = model(**repeat_features(features, len(depths))).float().view(len(depths), groups,
                                                                                  group_size)
            losses.extend(loss_fn(scores[c]) for c in range(len(depths)))
    finally:
        set_forced_depth(gates, None)
        for gate in gates:
            gate.replicas = 1
        _release_memos(model)
        for module, training in modes:
            module.training = training
    return torch.stack(losses, dim=1)


@torch.no_grad()
def oracle_depths(model: torch.nn.Module, features: dict, groups: int, group_size: int, depth: int,
                  loss_fn: Callable, max_rows: int | None = None) -> torch.Tensor:
    """``[groups]`` index of the depth whose forced use gives the lowest ranking loss of each group."""
    losses = forced_depth_losses(model, features, groups, group_size, depth, loss_fn, max_rows)
    # argmin takes the first minimum: ties (e.g. identical depths at init) resolve to the lowest depth.
    return losses.argmin(dim=1)


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
              samples: int, beta: float, eta: float, eps: float, gates=None,
              max_rows: int | None = None) -> dict[str, torch.Tensor]:
    """One GRPO objective on a batch: ``samples`` depth choices per group in one forward of the repeated batch
    (chunks of whole samples above ``max_rows`` rows; on a CPU by default one sample per forward), every chunk's
    graph kept for one backward.

    Returns the ranking loss (mean over samples; it trains backbone, head and other MAW parameters), the policy
    objective and what to log. Rewards are ``-loss`` of each group under each sampled choice.
    """
    gates = gates if gates is not None else routing_gates(model, ("grpo",))
    per_chunk = copies_per_chunk(samples, groups * group_size,
                                 _replicated_rows(max_rows, features["input_ids"].device))
    scores, log_prob, logits = [], [[] for _ in gates], [[] for _ in gates]
    # chunks of equal size see the same inputs: a layer whose input is the batch itself (the first MAW layer of a
    # cached top, with no dropout before it) computes its statistics once
    set_repeated_inputs(gates, per_chunk < samples)
    try:
        for first in range(0, samples, per_chunk):
            copies = min(samples, first + per_chunk) - first
            scores.append(model(**repeat_features(features, copies)).float())
            for i, gate in enumerate(gates):  # a gate records its last forward only: collect each chunk's
                if gate.last_log_prob is None:
                    raise RuntimeError("grpo layer recorded no sampled actions (is the model in training mode?)")
                log_prob[i].append(gate.last_log_prob)
                logits[i].append(gate.last_logits)
    finally:
        set_repeated_inputs(gates, False)
        _release_memos(model)
    scores = torch.cat(scores).view(samples, groups, group_size)
    per_sample = torch.stack([loss_fn(scores[g]) for g in range(samples)], dim=1)  # [groups, G]
    rewards = -per_sample.detach()
    advantages = group_advantages(rewards, eps)
    log_probs = 0
    for parts in log_prob:
        log_probs = log_probs + torch.cat(parts).view(samples, groups, group_size).sum(-1).t()
    out = grpo_loss(advantages, log_probs, [torch.cat(parts) for parts in logits], beta, eta)
    out.update(rank=per_sample.mean(), reward=rewards.mean(), reward_std=rewards.std(dim=1, unbiased=False).mean())
    return out
