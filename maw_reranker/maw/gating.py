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

    ``config`` is shared with the MAW layer and the patched model (one home for the settings): the gating reads its
    mode, sharpness and temperature from it at every call. Parameters are created on ``device`` in ``dtype`` (those
    of the wrapped layer), so a gating module never mixes devices or dtypes with the model it sits in.

    Control attributes set by the trainer (plain attributes, not saved): ``forced_depth``, a LongTensor ``[B]`` or
    None: use this depth for every example (oracle search, GRPO replay); ``forced_logits`` (default True): whether a
    forced pass still computes the depths' statistics and the policy logits from them (the oracle's passes use
    neither, and without them each example's attention is computed at its forced depth alone); ``repeated_inputs``
    (default False): the coming passes see the same inputs again (GRPO's samples, one per pass), so the layer may
    reuse the previous pass's statistics where its inputs and weights are unchanged; ``replicas`` (default 1): a
    forced pass's batch is that many copies of one batch (the oracle's batched pass), so the layer may compute
    what does not depend on the depth once for them.
    """

    def __init__(self, config: MAWConfig, hidden_size: int, num_heads: int, layer_index: int = 0,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        device = torch.device("cpu") if device is None else device  # explicit, never the global default device
        factory = {"device": device, "dtype": dtype}
        out_dim = self.depth * (num_heads if self.per_head else 1)
        if self.mode == "random":
            gen = torch.Generator().manual_seed(int(config.maw_random_seed) * 1000 + layer_index)
            raw = torch.rand(self.depth, generator=gen, device="cpu")  # on the generator's device, then moved
            # A fixed draw per layer, so scores do not depend on batch composition or order.
            self.register_buffer("random_weights", (raw / raw.sum()).to(device))
        elif self.mode == "learned":
            self.theta = nn.Parameter(torch.zeros(out_dim, **factory))
        elif self.mode == "gate":
            self.gate = nn.Sequential(nn.Linear(hidden_size, config.gate_hidden, **factory), nn.Tanh(),
                                      nn.Linear(config.gate_hidden, out_dim, **factory))
            nn.init.zeros_(self.gate[2].weight)  # starts uniform, like `learned`
            nn.init.zeros_(self.gate[2].bias)
        elif self.mode in ("router", "grpo"):
            # Logits = stat score (the zero-shot prior) + a learned residual that starts at zero: an untrained
            # router behaves as `argmax`, and training moves it from there.
            self.router = nn.Sequential(nn.Linear(len(STAT_NAMES) * self.depth, config.gate_hidden, **factory),
                                        nn.GELU(), nn.Linear(config.gate_hidden, self.depth, **factory))
            nn.init.zeros_(self.router[2].weight)
            nn.init.zeros_(self.router[2].bias)
        self.forced_depth: Optional[torch.Tensor] = None
        self.forced_logits = True
        self.repeated_inputs = False
        self.replicas = 1
        self.reset_records()

    # Settings read from the shared config (structural ones, depth and per_head, must not change after patching).
    @property
    def mode(self) -> str:
        return self.config.gating_mode

    @property
    def depth(self) -> int:
        return int(self.config.depth_dim)

    @property
    def per_head(self) -> bool:
        return bool(self.config.per_head)

    @property
    def needs_stats(self) -> bool:
        return self.config.needs_stats

    def reset_records(self) -> None:
        self.last_weights: Optional[torch.Tensor] = None
        self.last_logits: Optional[torch.Tensor] = None
        self.last_actions: Optional[torch.Tensor] = None
        self.last_log_prob: Optional[torch.Tensor] = None

    def policy_logits(self, stats: torch.Tensor) -> torch.Tensor:
        """Router/policy logits ``[B, D]`` (float32) from raw statistics ``[B, D, 4]``."""
        prior = float(self.config.stat_sharpness) * stat_scores(stats)
        features = normalize_stats(stats).flatten(1).to(self.router[0].weight.dtype)
        return prior + self.router(features).float()

    def decide(self, batch: int, stats: Optional[torch.Tensor], pooled: Optional[torch.Tensor],
               device: Optional[torch.device] = None) -> GateDecision:
        """Weights ``[B, D]`` (or ``[B, H, D]`` with ``per_head``), float32, non-negative and summing to 1 over D,
        on ``device`` (default: that of ``stats`` or ``pooled``; the layer passes its inputs' device).

        Pure: records nothing, so the layer may call it once per chunk of the batch."""
        if device is None:
            device = stats.device if stats is not None else (pooled.device if pooled is not None else self._device())
        mode, depth = self.mode, self.depth
        logits = actions = log_prob = None
        hard = False
        if self.forced_depth is not None:
            weights = F.one_hot(self.forced_depth.to(device), depth).float()
            hard = True
            if mode in ("router", "grpo") and stats is not None:
                logits = self.policy_logits(stats)
        elif mode == "uniform":
            weights = torch.full((batch, depth), 1.0 / depth, device=device)
        elif mode == "random":
            w = self.random_weights.to(device=device, dtype=torch.float32)
            weights = (w / w.sum()).expand(batch, -1)  # renormalized: a bf16 save of the buffer sums to 1 roughly
        elif mode == "stat":
            weights = torch.softmax(float(self.config.stat_sharpness) * stat_scores(stats), dim=-1)
        elif mode == "argmax":
            weights = F.one_hot(stat_scores(stats).argmax(-1), depth).float()
            hard = True
        elif mode == "learned":
            weights = self._softmax(self.theta.float().expand(batch, -1))
        elif mode == "gate":
            weights = self._softmax(self.gate(pooled.to(self.gate[0].weight.dtype)).float())
        elif mode == "router":
            logits = self.policy_logits(stats)
            if self.training:
                # Straight-through Gumbel-softmax: one-hot forward, soft gradient.
                weights = F.gumbel_softmax(logits, tau=float(self.config.router_tau), hard=True)
            else:
                weights = F.one_hot(logits.argmax(-1), depth).float()
                hard = True
        elif mode == "grpo":
            logits = self.policy_logits(stats)
            if self.training:  # the policy samples; GRPO's objective uses these actions and log-probabilities
                dist = torch.distributions.Categorical(logits=logits)
                actions = dist.sample()
                log_prob = dist.log_prob(actions)
            else:
                actions = logits.argmax(-1)
            weights = F.one_hot(actions, depth).float()
            hard = True
        else:  # pragma: no cover - MAWConfig validates the mode
            raise ValueError(mode)
        return GateDecision(weights, hard, logits, actions, log_prob)

    def record(self, decision: GateDecision) -> None:
        self.last_weights = decision.weights.detach()
        self.last_logits = decision.logits
        self.last_actions = decision.actions
        self.last_log_prob = decision.log_prob

    def forward(self, batch: int, stats: Optional[torch.Tensor], pooled: Optional[torch.Tensor],
                device: Optional[torch.device] = None) -> torch.Tensor:
        decision = self.decide(batch, stats, pooled, device)
        self.record(decision)
        return decision.weights

    def _apply(self, fn, recurse=True):
        # ``random_weights`` stays float32 under model.to(dtype) / .half(): only its device follows (a bf16 copy
        # would move the weights by up to 0.2%).
        weights = getattr(self, "random_weights", None)
        super()._apply(fn, recurse)
        if weights is not None and self.random_weights.dtype != weights.dtype:
            self.random_weights = weights.to(self.random_weights.device)
        return self

    def _device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        if self.per_head:
            return torch.softmax(logits.view(logits.shape[0], self.num_heads, self.depth), dim=-1)
        return torch.softmax(logits, dim=-1)
