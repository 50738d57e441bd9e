"""The explicit training path: ``O_maw = dropout(sum_d w_d A_d) V`` with autograd, one tile at a time.

Why not one fused attention call per depth (``functional.combine_depths``)? With attention dropout each fused call
draws its own mask, so the depths would be regularized independently where the wrapped layer drops entries of its
one attention map; and on a CPU the fused kernels with dropout fall back to a math kernel that keeps three maps per
depth for backward. Here the D maps of a chunk come from one batched matmul over narrow depth slices, are combined,
and the combined map gets the layer's dropout, like the original attention's. Nothing map-sized is kept for
backward but the dropout mask (one boolean map of the batch, not one per depth): backward recomputes the tile's
maps and applies the softmax gradient of all depths in place. Tiles are chunks of examples, groups of heads or
blocks of query rows (softmax runs along keys, so rows are independent), so one example's ``H x D x L x L`` maps
are never built whole, at batch 1 either.

Measured on 2 CPU cores (B=64, H=12, L=128, D=8, forward + backward; ``benchmarks/bench_maw_paths.py``):
0.67 s with dropout 0.1 against 2.75 s for fused calls per depth, before the tiles became views inside one autograd
node (faster since: docs/maw.md).
"""

from __future__ import annotations

from typing import Optional

import torch

from maw_reranker.maw.functional import (DepthInputs, _right_padded, _tiles, depth_scales, map_dtype,
                                         stacked_depths)

# Score elements of one tile's D maps (4 MiB in float32), and at most a quarter of one attention map of the batch:
# backward holds about three tiles at once, so the peak extra memory stays under one map at any batch size.
_TRAIN_TILE_ELEMENTS = 1 << 20


def combined_attention(inp: DepthInputs, weights: torch.Tensor, dropout_p: float = 0.0, chunk: int = 0,
                       hard: bool = False, tile: int = 0) -> torch.Tensor:
    """``dropout(sum_d w_d A_d) @ V`` as ``[B, H, L, Dh]`` for weights ``[B, D]`` or ``[B, H, D]``, differentiable in
    the queries, keys, values and weights. Rows past a chunk's longest input (right padding) are zero. With
    ``hard`` (one-hot ``[B, D]`` weights that need no gradient: sampled or forced depths), each example is computed
    at its selected depth only. Not for inputs with a per-depth score bias (DeBERTa): those take the fused path.

    Work goes chunk of examples by chunk, and each chunk tile by tile (groups of heads, else blocks of query rows of
    one head, as in inference: ``functional._tiles``), so no tile's D maps exceed ``tile`` score elements (automatic:
    ``_TRAIN_TILE_ELEMENTS``, at most an eighth of one map of the batch), at batch 1 too. The maps are computed in
    ``functional.map_dtype`` (float32 for reduced precision on a CPU), as inference computes them, and the output is
    rounded once to the input dtype: train and eval modes share one numeric contract."""
    if inp.bias is not None:
        raise ValueError("combined_attention does not take a score bias; use functional.combine_depths")
    if hard and weights.dim() == 2 and inp.depth > 1:
        return _selected_depths(inp, weights.argmax(-1), dropout_p, chunk, tile)
    batch, heads, length, _ = inp.v.shape
    depth = inp.depth
    budget = tile if tile > 0 else max(1, min(_TRAIN_TILE_ELEMENTS, batch * heads * length * length // 8))
    if chunk <= 0:
        chunk = max(1, min(batch, budget // (heads * depth * length * length)))
    work = map_dtype(inp.v)
    trim = _right_padded(inp.key_valid)
    lengths = inp.key_valid.sum(-1).tolist() if trim else None
    plan = []  # (examples, their longest input, its tiles): the whole batch's work, done by one autograd node
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        n = max(max(lengths[rows]), 1) if trim else length
        plan.append((rows, n, _tiles(rows.stop - rows.start, heads, depth, n, split_rows=True, budget=budget)))
    # the depths side by side once for the batch ([B, H, D, L, w]; a view where the layer made them so): tiles are
    # views of these inside the node, so backward writes each tile's gradient once instead of one zero-filled
    # input-sized gradient per slice of every tile. The scales are applied tile by tile, inside the node: folding
    # them into the whole batch's queries here would cost one more q-sized tensor and its backward.
    q = stacked_depths(inp, "q", slice(None), length, work)
    k = stacked_depths(inp, "k", slice(None), length, work)
    out = _CombinedAttention.apply(q, k, inp.v.to(work), weights, depth_scales(inp, work), inp.allowed,
                                   float(dropout_p), plan)
    return out.to(inp.v.dtype)


def _selected_depths(inp: DepthInputs, selected: torch.Tensor, dropout_p: float, chunk: int,
                     tile: int) -> torch.Tensor:
    """Each example's attention at its selected depth alone (the examples of one depth at a time)."""
    out = None
    for d in range(inp.depth):
        index = (selected == d).nonzero().flatten()
        if index.numel() == 0:
            continue
        every = index.numel() == selected.numel()

        def rows(t):
            return t if every or t is None else t.index_select(0, index)

        one = DepthInputs.stacked(rows(inp.q[d]).unsqueeze(2), rows(inp.k[d]).unsqueeze(2), [inp.scale[d]],
                                  v=rows(inp.v), allowed=rows(inp.allowed), key_valid=rows(inp.key_valid))
        ones = torch.ones(index.numel(), 1, dtype=inp.v.dtype, device=inp.v.device)
        o_d = combined_attention(one, ones, dropout_p, chunk, tile=tile)
        if every:
            return o_d
        out = torch.zeros_like(inp.v, dtype=o_d.dtype) if out is None else out
        out = out.index_copy(0, index, o_d)
    return out


def _probabilities(q: torch.Tensor, k: torch.Tensor, allowed: Optional[torch.Tensor]) -> torch.Tensor:
    """Every depth's attention map ``[b, H, D, n, n]`` (one allocation, softmax in place)."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if allowed is not None:
        scores.masked_fill_(~allowed.unsqueeze(2), torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, out=scores)


def _combined(probs: torch.Tensor, w: torch.Tensor, keep: Optional[torch.Tensor], p: float) -> torch.Tensor:
    """``sum_d w_d P_d`` (``w`` as ``[b, 1 or H, 1, D]``), then the dropout mask ``keep``: its 1/(1-p) rides on the
    weights, so the map sees one pass."""
    b, h, d, n, m = probs.shape
    if keep is not None:
        w = w * (1.0 / (1.0 - p))
    combined = torch.matmul(w, probs.reshape(b, h, d, n * m)).view(b, h, n, m)
    if keep is not None:
        combined.mul_(keep)
    return combined


def _chunk_mask(allowed: Optional[torch.Tensor], rows: slice, n: int) -> Optional[torch.Tensor]:
    """The chunk's ``[b, 1 or H, n, n]`` mask, None where it allows everything."""
    if allowed is None:
        return None
    mask = allowed[rows][..., :n, :n]
    return None if bool(mask.all()) else mask


def _tile_mask(mask: Optional[torch.Tensor], hs: slice, rs: slice) -> Optional[torch.Tensor]:
    return None if mask is None else mask[:, hs if mask.shape[1] > 1 else slice(None), rs]


class _CombinedAttention(torch.autograd.Function):
    """The batch, tile by tile (``plan``: per chunk of examples, its longest input ``n`` and its (heads, query
    rows) tiles). q, k ``[B, H, D, L, w]`` (views are fine), v ``[B, H, L, Dh]``, weights ``[B, D]`` or
    ``[B, H, D]``, scale ``[D, 1, 1]`` (each depth's score scale, no gradient), allowed boolean ``[B, 1 or H, L, L]``
    or None. Output rows past a chunk's ``n`` are zero. Saves the inputs and the dropout mask (one boolean map of the
    batch); backward recomputes each tile's maps."""

    @staticmethod
    def forward(ctx, q, k, v, weights, scale, allowed, p, plan):
        batch, heads, depth, length = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
        out = v.new_zeros(v.shape)
        # every entry a tile reads is written first (a chunk's n x n block)
        keep = torch.empty(batch, heads, length, length, dtype=torch.bool, device=q.device) if p > 0 else None
        for rows, n, tiles in plan:
            b = rows.stop - rows.start
            mask = _chunk_mask(allowed, rows, n)
            w = _weights_view(weights[rows], b, depth).to(q.dtype)
            for hs, rs in tiles:
                wt = w[:, hs] if weights.dim() == 3 else w
                qt = _scaled(q[rows, hs, :, rs], scale)
                probs = _probabilities(qt, k[rows, hs, :, :n], _tile_mask(mask, hs, rs))
                drop = None
                if p > 0:  # kept with probability 1 - p (uniform draws compared: twice as fast as bernoulli_ here)
                    drop = torch.rand(b, probs.shape[1], probs.shape[-2], n, device=q.device) < (1.0 - p)
                    keep[rows, hs, rs, :n] = drop
                combined = _combined(probs, wt, drop, p)
                del probs
                out[rows, hs, rs] = torch.matmul(combined, v[rows, hs, :n])
        ctx.save_for_backward(q, k, v, weights, scale, allowed, keep)
        ctx.p, ctx.plan = p, plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, weights, scale, allowed, keep = ctx.saved_tensors
        p, plan = ctx.p, ctx.plan
        depth, length = q.shape[2], q.shape[3]
        grad_out = grad_out.to(v.dtype)
        # Written tile by tile, the first query-row tile of each (chunk, heads) assigning: only the positions past a
        # chunk's longest input need zeros (a zero-filled q-sized gradient costs a pass over fresh pages).
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_w = torch.zeros(weights.shape, dtype=q.dtype, device=q.device)
        kept = 1.0 / (1.0 - p) if keep is not None else 1.0  # dropout's scale of the kept entries
        for rows, n, tiles in plan:
            if n < length:
                grad_q[rows, :, :, n:] = 0
                grad_k[rows, :, :, n:] = 0
                grad_v[rows, :, n:] = 0
            b = rows.stop - rows.start
            mask = _chunk_mask(allowed, rows, n)
            w = _weights_view(weights[rows], b, depth).to(q.dtype)
            per_depth = weights[rows].to(q.dtype)
            for hs, rs in tiles:
                h = hs.stop - hs.start
                wt = w[:, hs] if weights.dim() == 3 else w
                qt, kt, vt = _scaled(q[rows, hs, :, rs], scale), k[rows, hs, :, :n], v[rows, hs, :n]
                go = grad_out[rows, hs, rs]
                drop = None if keep is None else keep[rows, hs, rs, :n]
                probs = _probabilities(qt, kt, _tile_mask(mask, hs, rs))
                combined = _combined(probs, wt, drop, p)
                _accumulate(grad_v[rows, hs, :n], torch.matmul(combined.transpose(-1, -2), go), rs.start == 0)
                del combined
                grad_a = torch.matmul(go, vt.transpose(-1, -2))  # [b, h, rows, n]
                if drop is not None:  # its 1/(1-p) is `kept` below, applied to sums and narrow products
                    grad_a.mul_(drop)
                # dL/dP_d = w_d gA; softmax backward: dL/dS_d = w_d G_d with G_d = P_d (gA - sum_k P_d gA);
                # dL/dw_d = sum P_d gA. w_d (and the scale, for q) multiply the narrow products G_d K_d and
                # G_d^T Q_d instead of the D maps: one pass over the maps fewer.
                grad_s = probs * grad_a.unsqueeze(2)  # P_d gA
                row = grad_s.sum(-1, keepdim=True)  # [b, h, D, rows, 1]
                if weights.dim() == 3:
                    grad_w[rows, hs] += row.sum((3, 4)) * kept
                else:
                    grad_w[rows] += row.sum((1, 3, 4)) * kept
                grad_s.addcmul_(probs, row, value=-1.0)
                del probs
                wd = (per_depth.view(b, 1, depth, 1, 1) if weights.dim() == 2
                      else per_depth[:, hs].view(b, h, depth, 1, 1)) * kept
                grad_q[rows, hs, :, rs] = torch.matmul(grad_s, kt).mul_(wd * scale)
                _accumulate(grad_k[rows, hs, :, :n], torch.matmul(grad_s.transpose(-1, -2), qt).mul_(wd),
                            rs.start == 0)
        return grad_q, grad_k, grad_v, grad_w.to(weights.dtype), None, None, None, None


def _scaled(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A tile's queries ``[b, h, D, r, w]`` times their depth's scale, contiguous (one pass, tile-sized)."""
    return torch.mul(q, scale, out=torch.empty(q.shape, dtype=q.dtype, device=q.device))


def _accumulate(target: torch.Tensor, value: torch.Tensor, first: bool) -> None:
    """``target = value`` for a (chunk, heads) block's first query-row tile, ``target += value`` after it."""
    if first:
        target.copy_(value)
    else:
        target.add_(value)


def _weights_view(weights: torch.Tensor, b: int, d: int) -> torch.Tensor:
    """``[b, 1, 1, D]`` for per-example weights, ``[b, H, 1, D]`` for per-head ones (the left factor of the combine)."""
    return weights.view(b, 1, 1, d) if weights.dim() == 2 else weights.unsqueeze(-2)
