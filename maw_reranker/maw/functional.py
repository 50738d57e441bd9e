"""The fast MAW computation (docs/MAW.md sections 2-6), streamed over depths.

Nothing here allocates the ``B x H x L x L x D`` tensor. Depth weights that need no statistics go straight to
fused ``scaled_dot_product_attention`` calls, one per depth, accumulated into one output. Statistics are computed
one depth at a time over chunks of the batch, so the peak extra memory stays about one attention map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# Order of the per-depth statistics everywhere in the package.
STAT_NAMES = ("variance", "max", "entropy", "hhi")
STAT_COEFFS = {"variance": 0.5, "max": 0.3, "hhi": 0.2, "entropy": -0.4}


def depth_slices(width: int, depth: int) -> list[tuple[int, int]]:
    """Contiguous feature slices as ``torch.tensor_split`` cuts them (sizes differ by at most one)."""
    if not 1 <= depth <= width:
        raise ValueError(f"depth_dim={depth} must be between 1 and the head width {width} for depth_source='split'")
    base, extra = divmod(width, depth)
    out, start = [], 0
    for d in range(depth):
        size = base + (1 if d < extra else 0)
        out.append((start, start + size))
        start += size
    return out


@dataclass
class DepthInputs:
    """Per-depth queries/keys of one forward pass, plus what every depth shares.

    ``q[d]``/``k[d]`` are ``[B, H, L, w_d]``; ``scale[d]`` multiplies ``q[d] . k[d]``; ``bias(d, index)`` returns an
    additive ``[b, H, L, L]`` score term for depth d (DeBERTa's relative-position terms) or None; ``v`` is
    ``[B, H, L, Dh]``; ``allowed`` is a boolean ``[B, 1 or H, L, L]`` mask (True = may attend) or None;
    ``key_valid`` is ``[B, L]`` (padding positions False).
    """

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    scale: list[float]
    v: torch.Tensor
    allowed: Optional[torch.Tensor]
    key_valid: torch.Tensor
    bias: Optional[Callable[[int, Optional[torch.Tensor]], Optional[torch.Tensor]]] = None

    @property
    def depth(self) -> int:
        return len(self.q)


def _rows(t: Optional[torch.Tensor], index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None or index is None:
        return t
    if isinstance(index, slice):
        return t[index]
    return t.index_select(0, index)


def depth_scores(inp: DepthInputs, d: int, index=None) -> torch.Tensor:
    """Masked pre-softmax scores of depth d for the examples in ``index`` (all when None)."""
    q, k = _rows(inp.q[d], index), _rows(inp.k[d], index)
    scores = torch.matmul(q, k.transpose(-1, -2)) * inp.scale[d]
    if inp.bias is not None:
        extra = inp.bias(d, index)
        if extra is not None:
            scores = scores + extra
    allowed = _rows(inp.allowed, index)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores


def _auto_chunk(inp: DepthInputs, requested: int) -> int:
    batch = inp.v.shape[0]
    if requested > 0:
        return min(requested, batch)
    # Scores + probabilities of a chunk together stay about half an attention map of the full batch.
    return max(1, math.ceil(batch / 4))


@torch.no_grad()
def depth_statistics(inp: DepthInputs, chunk: int = 0) -> torch.Tensor:
    """Per-example statistics ``[B, D, 4]`` (variance, max, entropy, HHI of each attention row over valid keys),
    averaged over heads and valid query rows. Computed without autograd: they drive selection, not gradients."""
    batch = inp.v.shape[0]
    step = _auto_chunk(inp, chunk)
    key_valid = inp.key_valid
    n_keys = key_valid.sum(-1).clamp_min(1).float()  # [B]
    out = torch.zeros(batch, inp.depth, 4, dtype=torch.float32, device=inp.v.device)
    for start in range(0, batch, step):
        rows = slice(start, min(start + step, batch))
        qv = key_valid[rows].float()  # valid query rows (self-attention: same positions)
        n = n_keys[rows].view(-1, 1, 1)
        denom = qv.sum(-1).clamp_min(1) * inp.v.shape[1]  # valid rows x heads
        for d in range(inp.depth):
            scores = depth_scores(inp, d, rows).float()
            lse = torch.logsumexp(scores, dim=-1)  # [b, H, L]
            probs = torch.exp(scores - lse.unsqueeze(-1))
            hhi = (probs * probs).sum(-1)
            row_max = torch.exp(scores.amax(-1) - lse)
            # entropy = -sum p log p = lse - sum p * s (masked scores carry p == 0 exactly)
            entropy = lse - (probs * scores.clamp_min(-1e30)).sum(-1)
            variance = hhi / n - 1.0 / (n * n)  # population variance of a row summing to 1 over n keys
            del scores, probs
            for j, stat in enumerate((variance, row_max, entropy, hhi)):
                out[rows, d, j] = (stat * qv.unsqueeze(1)).sum((-1, -2)) / denom
    return out


def normalize_stats(stats: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each statistic across the D depths of each example (all-equal -> 0)."""
    low = stats.amin(dim=1, keepdim=True)
    span = stats.amax(dim=1, keepdim=True) - low
    return torch.where(span > 0, (stats - low) / span.clamp_min(1e-12), torch.zeros_like(stats))


def stat_scores(stats: torch.Tensor) -> torch.Tensor:
    """``0.5*var + 0.3*max + 0.2*hhi - 0.4*entropy`` on normalized statistics: ``[B, D]``."""
    norm = normalize_stats(stats)
    coeff = torch.tensor([STAT_COEFFS[name] for name in STAT_NAMES], dtype=norm.dtype, device=norm.device)
    return (norm * coeff).sum(-1)


def _weight_at(weights: torch.Tensor, d: int) -> torch.Tensor:
    if weights.dim() == 2:  # [B, D]
        return weights[:, d].view(-1, 1, 1, 1)
    return weights[:, :, d].unsqueeze(-1).unsqueeze(-1)  # [B, H, D]


def _sdpa(q, k, v, scale, bias, allowed, dropout_p):
    mask = allowed
    if bias is not None:
        mask = bias if allowed is None else bias.masked_fill(~allowed, torch.finfo(bias.dtype).min)
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def combine_depths(inp: DepthInputs, weights: torch.Tensor, dropout_p: float = 0.0, hard: bool = False) -> torch.Tensor:
    """``O_maw = (sum_d w_d A_d) V`` as ``sum_d w_d (A_d V)``: one fused attention call per depth.

    ``weights`` is ``[B, D]`` or ``[B, H, D]``. With ``hard`` (one-hot weights and no gradient needed), each example
    is computed only at its selected depth, so the cost is that of one ordinary attention.
    """
    out = torch.zeros_like(inp.v)
    if hard and weights.dim() == 2:
        selected = weights.argmax(-1)
        for d in range(inp.depth):
            index = (selected == d).nonzero().flatten()
            if index.numel() == 0:
                continue
            if index.numel() == selected.numel():
                index = None
            bias = inp.bias(d, index) if inp.bias is not None else None
            o_d = _sdpa(_rows(inp.q[d], index), _rows(inp.k[d], index), _rows(inp.v, index), inp.scale[d], bias,
                        _rows(inp.allowed, index), dropout_p)
            if index is None:
                return o_d
            out.index_copy_(0, index, o_d)
        return out
    for d in range(inp.depth):
        w_d = _weight_at(weights, d)
        bias = inp.bias(d, None) if inp.bias is not None else None
        o_d = _sdpa(inp.q[d], inp.k[d], inp.v, inp.scale[d], bias, inp.allowed, dropout_p)
        out = out + w_d.to(o_d.dtype) * o_d
    return out


def selected_attention(inp: DepthInputs, weights: torch.Tensor) -> torch.Tensor:
    """The combined 4D map ``A_sel = sum_d w_d A_d`` (only built when the model is asked for attentions)."""
    total = None
    for d in range(inp.depth):
        probs = torch.softmax(depth_scores(inp, d).float(), dim=-1) * _weight_at(weights, d).float()
        total = probs if total is None else total + probs
    return total.to(inp.v.dtype)


def fix_empty_rows(allowed: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Rows with no allowed key (padded queries in DeBERTa's 2D mask) attend everywhere, as masked_fill+softmax
    does in the original models; fused kernels would return NaN for them, which then leaks through V."""
    if allowed is None:
        return None
    empty = ~allowed.any(-1, keepdim=True)
    return allowed | empty if bool(empty.any()) else allowed
