"""Depth weights ``w[b, d]`` for every gating mode (docs/MAW.md section 3).

One module per MAW layer. It owns the learned parameters of the mode (if any) and records what it decided on the
last forward pass (weights, selected depth, router logits, sampled actions and their log-probabilities), which the
trainer (router supervision, GRPO) and the evaluator (depth logs) read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from maw_reranker.maw.config import MAWConfig
from maw_reranker.maw.functional import STAT_NAMES, normalize_stats, stat_scores


@dataclass
class GateDecision:
    """What a gating module decided for a batch (or a chunk of it)."""

    weights: torch.Tensor
    hard: bool = False
    logits: Optional[torch.Tensor] = None
    actions: Optional[torch.Tensor] = None
    log_prob: Optional[torch.Tensor] = None

    @staticmethod
    def concat(parts: list["GateDecision"]) -> "GateDecision":
        if len(parts) == 1:
            return parts[0]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return GateDecision(cat("weights"), all(p.hard for p in parts), cat("logits"), cat("actions"), cat("log_prob"))


class DepthGating(nn.Module):
    """Turns per-depth statistics and/or the layer input into depth weights.

    Control attributes set by the trainer (plain attributes, not saved):
      ``forced_depth``: LongTensor ``[B]`` or None: use this depth for every example (oracle search, GRPO replay).
      ``policy_mode``: ``"sample"`` or ``"greedy"`` for ``grpo`` in training mode (default ``"sample"``).
    """

    def __init__(self, config: MAWConfig, hidden_size: int, num_heads: int, layer_index: int = 0):
        super().__init__()
        self.mode = config.gating_mode
        self.depth = int(config.depth_dim)
        self.num_heads = num_heads
        self.sharpness = float(config.stat_sharpness)
        self.router_tau = float(config.router_tau)
        self.per_head = bool(config.per_head)
        out_dim = self.depth * (num_heads if self.per_head else 1)
        if self.mode == "random":
            gen = torch.Generator().manual_seed(int(config.maw_random_seed) * 1000 + layer_index)
            raw = torch.rand(self.depth, generator=gen)
            # A fixed draw per layer, so scores do not depend on batch composition or order.
            self.register_buffer("random_weights", raw / raw.sum())
        elif self.mode == "learned":
            self.theta = nn.Parameter(torch.zeros(out_dim))
        elif self.mode == "gate":
            self.gate = nn.Sequential(nn.Linear(hidden_size, config.gate_hidden), nn.Tanh(),
                                      nn.Linear(config.gate_hidden, out_dim))
            nn.init.zeros_(self.gate[2].weight)  # starts uniform, like `learned`
            nn.init.zeros_(self.gate[2].bias)
        elif self.mode in ("router", "grpo"):
            # Logits = stat score (the zero-shot prior) + a learned residual that starts at zero: an untrained
            # router behaves as `argmax`, and training moves it from there.
            self.router = nn.Sequential(nn.Linear(len(STAT_NAMES) * self.depth, config.gate_hidden), nn.GELU(),
                                        nn.Linear(config.gate_hidden, self.depth))
            nn.init.zeros_(self.router[2].weight)
            nn.init.zeros_(self.router[2].bias)
        self.forced_depth: Optional[torch.Tensor] = None
        self.policy_mode = "sample"
        self.reset_records()

    def reset_records(self) -> None:
        self.last_weights: Optional[torch.Tensor] = None
        self.last_logits: Optional[torch.Tensor] = None
        self.last_actions: Optional[torch.Tensor] = None
        self.last_log_prob: Optional[torch.Tensor] = None
        self.last_hard = False

    @property
    def needs_stats(self) -> bool:
        return self.mode in ("stat", "argmax", "router", "grpo")

    def policy_logits(self, stats: torch.Tensor) -> torch.Tensor:
        """Router/policy logits ``[B, D]`` from raw statistics ``[B, D, 4]``."""
        prior = self.sharpness * stat_scores(stats)
        features = normalize_stats(stats).flatten(1).to(self.router[0].weight.dtype)
        return prior + self.router(features).float()

    def decide(self, batch: int, stats: Optional[torch.Tensor], pooled: Optional[torch.Tensor]) -> GateDecision:
        """Weights ``[B, D]`` (or ``[B, H, D]`` with ``per_head``), non-negative and summing to 1 over D.

        Pure: records nothing, so the layer may call it once per chunk of the batch."""
        device = stats.device if stats is not None else (pooled.device if pooled is not None else None)
        logits = actions = log_prob = None
        hard = False
        if self.forced_depth is not None:
            forced = self.forced_depth.to(device)
            weights = F.one_hot(forced, self.depth).float()
            hard = True
            if self.mode in ("router", "grpo") and stats is not None:
                logits = self.policy_logits(stats)
        elif self.mode == "uniform":
            weights = torch.full((batch, self.depth), 1.0 / self.depth, device=device)
        elif self.mode == "random":
            weights = self.random_weights.to(device).expand(batch, -1)
        elif self.mode == "stat":
            weights = torch.softmax(self.sharpness * stat_scores(stats), dim=-1)
        elif self.mode == "argmax":
            weights = F.one_hot(stat_scores(stats).argmax(-1), self.depth).float()
            hard = True
        elif self.mode == "learned":
            weights = self._softmax(self.theta.float().expand(batch, -1))
        elif self.mode == "gate":
            weights = self._softmax(self.gate(pooled).float())
        elif self.mode == "router":
            logits = self.policy_logits(stats)
            if self.training:
                # Straight-through Gumbel-softmax: one-hot forward, soft gradient.
                weights = F.gumbel_softmax(logits, tau=self.router_tau, hard=True)
            else:
                weights = F.one_hot(logits.argmax(-1), self.depth).float()
                hard = True
        elif self.mode == "grpo":
            logits = self.policy_logits(stats)
            if self.training and self.policy_mode == "sample":
                dist = torch.distributions.Categorical(logits=logits)
                actions = dist.sample()
                log_prob = dist.log_prob(actions)
            else:
                actions = logits.argmax(-1)
            weights = F.one_hot(actions, self.depth).float()
            hard = True
        else:  # pragma: no cover - MAWConfig validates the mode
            raise ValueError(self.mode)
        return GateDecision(weights, hard, logits, actions, log_prob)

    def record(self, decision: GateDecision) -> None:
        self.last_weights = decision.weights.detach()
        self.last_logits = decision.logits
        self.last_actions = decision.actions
        self.last_log_prob = decision.log_prob
        self.last_hard = decision.hard

    def forward(self, batch: int, stats: Optional[torch.Tensor], pooled: Optional[torch.Tensor]) -> torch.Tensor:
        decision = self.decide(batch, stats, pooled)
        self.record(decision)
        return decision.weights

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        if self.per_head:
            return torch.softmax(logits.view(logits.shape[0], self.num_heads, self.depth), dim=-1)
        return torch.softmax(logits, dim=-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``log pi(a)`` of given actions under the last policy logits (GRPO)."""
        if self.last_logits is None:
            raise RuntimeError("log_prob() needs a forward pass of a router/grpo layer first")
        return torch.log_softmax(self.last_logits, dim=-1).gather(-1, actions.view(-1, 1)).squeeze(-1)
