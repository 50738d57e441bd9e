"""Plain reference implementation of MAW (docs/MAW.md sections 2-5), one example and one depth at a time.

Deliberately literal and slow: it builds each example's full 5D tensor ``A[h, q, k, d]`` on its valid tokens and
follows the specification line by line. Tests hold the fast path (``functional.py``) against it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from maw_reranker.maw.functional import DepthInputs


def reference_attention_5d(inp: DepthInputs, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Example b's 5D attention ``[H, n, n, D]`` over its n valid tokens, and the indices of those tokens."""
    valid = inp.key_valid[b].nonzero().flatten()
    maps = []
    for d in range(inp.depth):
        q = inp.q[d][b][:, valid].double()  # [H, n, w]
        k = inp.k[d][b][:, valid].double()
        scores = torch.einsum("hqw,hkw->hqk", q, k) * inp.scale[d]
        if inp.bias is not None:
            extra = inp.bias(d, torch.tensor([b], device=q.device))
            if extra is not None:
                scores = scores + extra[0][:, valid][:, :, valid].double()
        if inp.allowed is not None:
            allowed = inp.allowed[b][:, valid][:, :, valid]
            scores = scores.masked_fill(~allowed, float("-inf"))
        maps.append(torch.softmax(scores, dim=-1))
    return torch.stack(maps, dim=-1), valid


def reference_statistics(a5: torch.Tensor) -> torch.Tensor:
    """``[D, 4]``: variance, max, entropy, HHI of each row, averaged over heads and (valid) query rows."""
    stats = []
    for d in range(a5.shape[-1]):
        a = a5[..., d]  # [H, n, n]
        var = a.var(dim=-1, unbiased=False)
        mx = a.max(dim=-1).values
        ent = -(torch.where(a > 0, a * a.log(), torch.zeros_like(a))).sum(-1)
        hhi = (a ** 2).sum(-1)
        stats.append(torch.stack([var.mean(), mx.mean(), ent.mean(), hhi.mean()]))
    return torch.stack(stats)


def reference_stat_weights(stats: torch.Tensor, sharpness: float) -> torch.Tensor:
    """``softmax(tau * (0.5 var + 0.3 max + 0.2 hhi - 0.4 entropy))`` on min-max normalized stats, for one example."""
    var, mx, ent, hhi = (stats[:, j] for j in range(4))

    def norm(x):
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.zeros_like(x)

    score = 0.5 * norm(var) + 0.3 * norm(mx) + 0.2 * norm(hhi) - 0.4 * norm(ent)
    return torch.softmax(sharpness * score, dim=-1)


def reference_maw(
    inp: DepthInputs,
    weights_fn: Callable[[int, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference ``O_maw [B, H, L, Dh]``, ``A_sel [B, H, L, L]`` and the per-example weights.

    ``weights_fn(b, stats[D, 4])`` returns example b's depth weights ``[D]`` or ``[H, D]``.
    Padded positions of the outputs are zero.
    """
    batch, heads, length, width = inp.v.shape
    out = torch.zeros(batch, heads, length, width, dtype=torch.float64)
    a_sel_all = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    all_weights: list[Optional[torch.Tensor]] = []
    for b in range(batch):
        a5, valid = reference_attention_5d(inp, b)
        stats = reference_statistics(a5)
        w = weights_fn(b, stats).double()
        all_weights.append(w)
        if w.dim() == 1:
            a_sel = (a5 * w.view(1, 1, 1, -1)).sum(-1)
        else:
            a_sel = (a5 * w.view(heads, 1, 1, -1)).sum(-1)
        v = inp.v[b][:, valid].double()
        o = torch.einsum("hqk,hkc->hqc", a_sel, v)
        out[b][:, valid] = o
        a_sel_all[b][:, valid.unsqueeze(-1), valid] = a_sel
    return out, a_sel_all, torch.stack(all_weights)
