"""The fast MAW computation (docs/MAW.md sections 2-6).

Nothing here allocates the ``B x H x L x L x D`` tensor. Inference (``explicit_maw``) works one chunk of the batch
at a time (one example, cut into head groups, at realistic sizes): each group's D score maps come from one batched
matmul, are turned into probabilities and reduced to row statistics while still in cache, and the chunk's maps are
combined with its depth weights and applied to V. Training (``maw/layer.py`` picks the path) takes
``maw/combined_attention.py`` (depths combined, one dropout mask, maps recomputed in backward), except for inputs with
a score bias (DeBERTa) and for training without dropout on a device in ``layer.FUSED_DEVICES``: those take
``combine_depths`` here (one fused attention call per depth, no map stored for autograd), as does statistics-free
inference on those devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

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

    ``q[d]``/``k[d]`` are ``[B, H, L, w_d]``; ``scale[d]`` multiplies ``q[d] . k[d]``; ``bias(d, index, heads=None,
    rows=None)`` returns an additive ``[b, H, L, L]`` score term for depth d (DeBERTa's relative-position terms) or
    None, restricted to the given head and query-row slices when those are given; ``v`` is
    ``[B, H, L, Dh]``; ``allowed`` is a boolean ``[B, 1 or H, L, L]`` mask (True = may attend) or None;
    ``key_valid`` is ``[B, L]`` (padding positions False). ``q_stack``/``k_stack``, where the depths have one
    width, are the same queries/keys as one ``[B, H, D, L, w]`` tensor (often a view: split depths of one head),
    with ``q[d]`` its ``[:, :, d]``; the batched paths then read it instead of stacking the depths (see
    :meth:`stacked`).
    """

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    scale: list[float]
    v: torch.Tensor
    allowed: Optional[torch.Tensor]
    key_valid: torch.Tensor
    bias: Optional[Callable[[int, Optional[torch.Tensor]], Optional[torch.Tensor]]] = None
    q_stack: Optional[torch.Tensor] = None
    k_stack: Optional[torch.Tensor] = None
    # depth_source='project' keys as factors, where only a few query rows are computed (leading_rows_maw):
    # (x V_d [B, D, L, r], U_d per head [H, D, Dh, r]), k_d = k[d] + (x V_d) U_d^T, the D full-width keys never made
    k_factors: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @classmethod
    def stacked(cls, q_stack: torch.Tensor, k_stack: torch.Tensor, scale: list[float], **shared) -> "DepthInputs":
        """Inputs from ``[B, H, D, L, w]`` queries and keys; ``q[d]``/``k[d]`` are views of them (``unbind``, whose
        backward stacks the D gradients once)."""
        return cls(q=list(q_stack.unbind(2)), k=list(k_stack.unbind(2)), scale=list(scale), q_stack=q_stack,
                   k_stack=k_stack, **shared)

    @property
    def depth(self) -> int:
        return len(self.q)

    def first_rows(self, rows: int) -> "DepthInputs":
        """The same inputs with the queries (and the mask's query rows) of the first ``rows`` positions only: views,
        the same keys, and the same score bias (whose ``rows`` slice then selects those rows)."""
        return DepthInputs(q=[t[:, :, :rows] for t in self.q], k=self.k, scale=self.scale, v=self.v,
                           allowed=None if self.allowed is None else self.allowed[:, :, :rows],
                           key_valid=self.key_valid, bias=self.bias,
                           q_stack=None if self.q_stack is None else self.q_stack[:, :, :, :rows],
                           k_stack=self.k_stack, k_factors=self.k_factors)


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


def _right_padded(key_valid: torch.Tensor) -> bool:
    """True when every example's valid tokens are a prefix (then chunks can be trimmed to their longest one)."""
    lengths = key_valid.sum(-1, keepdim=True)
    return bool((key_valid == (torch.arange(key_valid.shape[-1], device=key_valid.device) < lengths)).all())


def stacked_depths(inp: DepthInputs, which: str, rows, n: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``[b, H, D, n, w_max]``: the depths of ``inp.q`` or ``inp.k`` (``which``) for the examples ``rows`` and the
    first ``n`` positions, side by side, so that one batched matmul yields every depth's scores. A view of
    ``q_stack``/``k_stack`` where there is one (a copy only to change the dtype); otherwise one copy, zero-padded to
    the widest depth (zeros add nothing to a dot product)."""
    pre = inp.q_stack if which == "q" else inp.k_stack
    if pre is not None:
        return pre[rows, :, :, :n].to(dtype or pre.dtype)
    tensors = inp.q if which == "q" else inp.k
    width = max(t.shape[-1] for t in tensors)
    first = tensors[0][rows, :, :n]
    dtype = dtype or first.dtype
    if all(t.shape[-1] == width for t in tensors):
        return torch.stack([t[rows, :, :n] for t in tensors], dim=2).to(dtype)
    out = first.new_zeros(first.shape[0], first.shape[1], len(tensors), n, width, dtype=dtype)
    for d, t in enumerate(tensors):
        out[:, :, d, :, : t.shape[-1]] = t[rows, :, :n]
    return out


def depth_scales(inp: DepthInputs, dtype: torch.dtype) -> torch.Tensor:
    """``scale[d]`` as a ``[D, 1, 1]`` tensor, to multiply ``[..., D, n, w]`` queries of ``dtype`` depth by depth:
    in float32 for bf16 / fp16 queries (a scale rounded to bf16 would bias each depth's temperature by up to 0.4%;
    the product is computed in float32 and rounded once, as with a Python float)."""
    wide = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    return torch.tensor(inp.scale, dtype=wide, device=inp.v.device).view(-1, 1, 1)


def scaled_queries(inp: DepthInputs, rows, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The chunk's stacked queries times their depth's scale, as a fresh contiguous tensor (scale folded in)."""
    view = stacked_depths(inp, "q", rows, n)
    out = torch.empty(view.shape, dtype=dtype, device=view.device)
    return torch.mul(view, depth_scales(inp, dtype), out=out)


def chunk_size(inp: DepthInputs, requested: int = 0) -> int:
    """Examples per chunk. Automatic: as many as keep the chunk's D score maps within ``_CHUNK_ELEMENTS`` (at least
    one example; one example's maps are then further cut by heads), so the work stays cache-sized."""
    batch, heads, length, _ = inp.v.shape
    if requested > 0:
        return min(requested, batch)
    return max(1, min(batch, _CHUNK_ELEMENTS // (heads * inp.depth * length * length)))


# Score elements per chunk or head group (4 MiB in float32): small enough to stay in cache while the softmax and the
# statistics passes read them (measured best of 2^18..2^22 on the benchmark), large enough to keep op counts low.
_CHUNK_ELEMENTS = 1 << 20


def _buffer(buffers: dict, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A view of a flat scratch buffer kept across chunks (chunks differ in length after trimming): fresh
    allocations of this size come straight from the OS, and their first touch costs a page fault per 4 KiB."""
    numel = math.prod(shape)
    flat = buffers.get(name)
    if flat is None or flat.numel() < numel:
        flat = buffers[name] = like.new_empty(numel)
    return flat[:numel].view(shape)


def _row_statistics(scores: torch.Tensor, probs: torch.Tensor, out: torch.Tensor) -> None:
    """Fill ``out[0..3]`` with each row's max p, log-sum-exp, sum_k p s and ||p||, one pass each (``scores`` is
    overwritten).

    log-sum-exp comes from the first key, lse = s_0 - log p_0 (exact for any key with p > 0), which saves a pass
    over the scores; rows where p_0 underflows (or key 0 is masked) take it from the maximum instead."""
    torch.amax(probs, dim=-1, out=out[0])
    p0 = probs[..., 0]
    if float(p0.min()) < max(1e-30, torch.finfo(p0.dtype).tiny):  # fp16's smallest normal is 6e-5
        torch.sub(scores.amax(-1), torch.log(out[0]), out=out[1])
    else:
        torch.sub(scores[..., 0], torch.log(p0), out=out[1])
    torch.linalg.vector_norm(probs, dim=-1, out=out[3])
    torch.sum(scores.mul_(probs), dim=-1, out=out[2])  # in place: the scores are not needed any more


def _example_statistics(rowstats: torch.Tensor, query_valid: torch.Tensor, lengths: torch.Tensor,
                        full_rows: bool = False) -> torch.Tensor:
    """``[b, D, 4]`` (variance, max, entropy, HHI) averaged over heads and valid query rows (``full_rows``: every
    row is valid). Entropy (lse - sum p s) and variance (HHI / n - 1 / n^2 over n valid keys) are linear in the row
    statistics, so only means are needed."""
    rowstats[3].square_()
    heads = rowstats.shape[2]
    weights = query_valid.to(rowstats.dtype)
    # float32 sums: in fp16 (on a GPU) H x L row log-sum-exps of about 12 pass fp16's maximum at L = 512.
    if full_rows:
        sums = rowstats.sum((2, 4), dtype=torch.float32)
    else:
        sums = (rowstats * weights[None, :, None, None, :]).sum((2, 4), dtype=torch.float32)
    max_p, lse, p_dot_s, hhi = sums / (weights.float().sum(-1) * heads).clamp_min(1).view(1, -1, 1)  # [b, D] each
    nk = lengths.clamp_min(1).to(sums.dtype).view(-1, 1)
    return torch.stack((hhi / nk - 1.0 / (nk * nk), max_p, lse - p_dot_s, hhi), dim=-1).float()


def _tiles(b: int, heads: int, depth: int, n: int, split_rows: bool, budget: int) -> list[tuple[slice, slice]]:
    """(heads, query rows) blocks whose D score maps hold at most ``budget`` values: whole chunks of several
    examples, else groups of heads, else (long inputs, ``split_rows``) blocks of query rows of one head."""
    per_head = b * depth * n * n
    group = max(1, min(heads, budget // per_head))
    rows = n if (group > 1 or not split_rows) else max(1, min(n, budget // (b * depth * n)))
    return [(slice(h, min(h + group, heads)), slice(r, min(r + rows, n)))
            for h in range(0, heads, group) for r in range(0, n, rows)]


@torch.no_grad()
def explicit_maw(inp: DepthInputs, decide: Callable, want_output: bool = True, want_map: bool = False,
                 need_stats: bool = True, chunk: int = 0):
    """Inference path: per chunk of examples, every depth's attention map is computed tile by tile (heads, then
    query rows), its statistics reduced while it is still in cache, the weights decided, and the maps combined
    and applied to V.

    Weights that need no statistics are decided first, so each tile is combined as soon as it is computed. With
    statistics, a chunk's D maps are kept until its weights are known only while they are small next to one
    attention map of the whole batch (at most half of it: a chunk of one example at batch 16 or more); otherwise
    (batch 1, interactive reranking) they are computed a second time, tile by tile, which bounds the extra memory
    by a few tiles at any length.

    ``decide(rows, stats_rows)`` returns the weights ``[b, D]``/``[b, H, D]`` of the examples in ``rows``: per chunk
    with statistics, once for the whole batch (``stats_rows`` None) when ``need_stats`` is False. Returns
    ``(O_maw or None, A_sel or None, stats or None)``.
    """
    batch, heads, length, _ = inp.v.shape
    depth = inp.depth
    step = chunk_size(inp, chunk)
    trim = _right_padded(inp.key_valid)
    lengths = inp.key_valid.sum(-1)
    length_list = lengths.tolist()
    out = torch.zeros_like(inp.v) if want_output else None
    a_map = inp.v.new_zeros(batch, heads, length, length) if want_map else None
    stats = torch.zeros(batch, depth, 4, dtype=torch.float32, device=inp.v.device) if need_stats else None
    combine = want_output or want_map
    keep = combine and need_stats and 2 * min(step, batch) * depth <= batch
    # A tile's scores and probabilities together stay within half of one attention map of the batch (short inputs
    # at batch 1), and within the cache-sized budget.
    budget = max(1, min(_CHUNK_ELEMENTS, batch * heads * length * length // 4))
    work = map_dtype(inp.v)
    buffers: dict = {}
    if keep:  # one allocation at the largest chunk's size, not one per new maximum length
        n_max = max(max(length_list) if trim else length, 1)
        _buffer(buffers, "kept", (min(step, batch), heads, depth, n_max, n_max), inp.v.new_empty(0, dtype=work))
    if not (combine or need_stats):
        return out, a_map, stats
    weights_all = None if need_stats else decide(slice(0, batch), None).to(work)
    for start in range(0, batch, step):
        rows = slice(start, min(start + step, batch))
        n = max(max(length_list[rows]) if trim else length, 1)
        q = scaled_queries(inp, rows, n, work)  # [b, H, D, n, w]
        k = stacked_depths(inp, "k", rows, n, work)
        v = inp.v[rows, :, :n].to(work)
        b = q.shape[0]
        allowed = None if inp.allowed is None else inp.allowed[rows][..., :n, :n]
        if allowed is not None and bool(allowed.all()):
            allowed = None

        def probabilities(hs: slice, rs: slice, out_probs: Optional[torch.Tensor], depths: slice = slice(None)):
            """Masked scores and their softmax (into ``out_probs``, or in place) for one tile, of every depth or of
            those in ``depths``."""
            g, r = hs.stop - hs.start, rs.stop - rs.start
            indices = range(depth)[depths]
            scores = _buffer(buffers, "scores", (b, g, len(indices), r, n), q)
            torch.matmul(q[:, hs, depths, rs], k[:, hs, depths].transpose(-1, -2), out=scores)
            if inp.bias is not None:
                for i, d in enumerate(indices):  # only the tile's part of each depth's bias is ever made
                    extra = inp.bias(d, rows, heads=hs, rows=rs)
                    if extra is not None:
                        scores[:, :, i] += extra[..., :n]
            if allowed is not None:
                mask = allowed[:, hs if allowed.shape[1] > 1 else slice(None), rs]
                scores.masked_fill_(~mask.unsqueeze(2), torch.finfo(scores.dtype).min)
            target = scores if out_probs is None else out_probs
            return scores, torch.softmax(scores, dim=-1, out=target)

        weights = None
        if need_stats:
            # Per valid query row: max p, log-sum-exp, sum_k p s, ||p||; everything else is linear in these.
            rowstats = _buffer(buffers, "rowstats", (4, b, heads, depth, n), q)
            kept = _buffer(buffers, "kept", (b, heads, depth, n, n), q) if keep else None
            for hs, rs in _tiles(b, heads, depth, n, split_rows=not keep, budget=budget):
                g, r = hs.stop - hs.start, rs.stop - rs.start
                target = kept[:, hs] if keep else _buffer(buffers, "probs", (b, g, depth, r, n), q)
                scores, probs = probabilities(hs, rs, target)
                _row_statistics(scores, probs, rowstats[:, :, hs, :, rs])
            full_rows = trim and min(length_list[rows]) == n
            stats_rows = _example_statistics(rowstats, inp.key_valid[rows, :n], lengths[rows], full_rows)
            stats[rows] = stats_rows
            if not combine:
                continue
            weights = decide(rows, stats_rows).to(q.dtype)
            selected = _single_depth(weights)
            if keep:
                combined = kept[:, :, selected] if selected is not None else _combine(kept, weights, buffers)
                if want_output:
                    out[rows, :, :n] = torch.matmul(combined, v)
                if want_map:
                    a_map[rows, :, :n, :n] = combined
                continue
        else:
            weights, selected = weights_all[rows], None
        # Combined as soon as computed; one-hot weights (argmax, router) need only the selected depth's map.
        depths = slice(None) if selected is None else slice(selected, selected + 1)
        for hs, rs in _tiles(b, heads, depth if selected is None else 1, n, split_rows=True, budget=budget):
            _, probs = probabilities(hs, rs, None, depths)
            if selected is not None:
                combined = probs[:, :, 0]
            else:
                combined = _combine(probs, weights if weights.dim() == 2 else weights[:, hs], buffers)
            if want_output:
                out[rows, hs, rs] = torch.matmul(combined, v[:, hs])
            if want_map:
                a_map[rows, hs, rs, :n] = combined
    return out, a_map, stats


def _single_depth(weights: torch.Tensor) -> Optional[int]:
    """The depth d when ``weights`` ``[b, D]`` put weight exactly 1 on d for every example (hard selection), else
    None. Then ``sum_d w_d P_d`` is ``P_d`` exactly."""
    if weights.dim() != 2:
        return None
    first = weights[0]
    d = int(first.argmax())
    if float(first[d]) != 1.0 or int(torch.count_nonzero(first)) != 1 or not bool((weights == first).all()):
        return None
    return d


def map_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype the explicit path computes its maps in: float32 on a CPU for reduced-precision inputs (its bf16 and
    fp16 softmax and reductions convert each element anyway and run slower than float32), else the inputs'."""
    if like.device.type == "cpu" and like.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return like.dtype


def _combine(probs: torch.Tensor, weights: torch.Tensor, buffers: dict) -> torch.Tensor:
    """``sum_d w_d P_d`` for probabilities ``[b, g, D, r, n]`` and weights ``[b, D]`` or ``[b, g, D]``: one
    ``[1 x D] @ [D x r*n]`` product per example and head, into a reused buffer. Returns ``[b, g, r, n]``."""
    b, g, depth, r, n = probs.shape
    flat = probs.reshape(b, g, depth, r * n)
    w = weights.view(-1, 1, 1, depth) if weights.dim() == 2 else weights.unsqueeze(-2)
    combined = torch.matmul(w, flat, out=_buffer(buffers, "combined", (b, g, 1, r * n), flat))
    return combined.view(b, g, r, n)


def depth_statistics(inp: DepthInputs, chunk: int = 0) -> torch.Tensor:
    """Per-example statistics ``[B, D, 4]`` (variance, max, entropy, HHI of each attention row over valid keys),
    averaged over heads and valid query rows. Computed without autograd: they drive selection, not gradients."""
    return explicit_maw(inp, decide=None, want_output=False, chunk=chunk)[2]


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
            o_d = depth_attention(inp, d, index, dropout_p)
            if index is None:
                return o_d
            out.index_copy_(0, index, o_d)
        return out
    for d in range(inp.depth):
        w_d = _weight_at(weights, d)
        o_d = depth_attention(inp, d, None, dropout_p)
        out = out + w_d.to(o_d.dtype) * o_d
    return out


def depth_attention(inp: DepthInputs, d: int, index: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    """``A_d V`` for the examples in ``index`` (all when None), by one fused attention call.

    Under autograd it is recomputed in backward instead of saved when saving would keep map-sized tensors: a score
    bias (DeBERTa's relative-position terms and their gather indices: about 6 maps per depth) or attention dropout
    on a CPU (the math kernel keeps scores, mask and dropped probabilities: 3 maps per depth). Fused GPU kernels
    without a bias save no map, so they run as they are."""
    if torch.is_grad_enabled() and (inp.bias is not None or (dropout_p > 0 and inp.v.device.type == "cpu")):
        # The RNG state is restored for the recomputation, so dropout draws the same mask twice.
        return torch.utils.checkpoint.checkpoint(_depth_attention, inp, d, index, dropout_p, use_reentrant=False)
    return _depth_attention(inp, d, index, dropout_p)


def _depth_attention(inp: DepthInputs, d: int, index: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    # In map_dtype, as the explicit path computes: on a CPU, reduced-precision inputs get float32 maps and one
    # rounding of the output, in training as in inference.
    work = map_dtype(inp.v)
    bias = inp.bias(d, index) if inp.bias is not None else None
    q_d, k_d = _full_width(inp, d)
    out = _sdpa(_rows(q_d, index).to(work), _rows(k_d, index).to(work), _rows(inp.v, index).to(work), inp.scale[d],
                None if bias is None else bias.to(work), _rows(inp.allowed, index), dropout_p)
    return out.to(inp.v.dtype)


def _full_width(inp: DepthInputs, d: int):
    """Depth d's query/key zero-padded to the value width: the same dot products, but fused attention kernels
    (which want equal query and value widths) apply."""
    q_d, k_d = inp.q[d], inp.k[d]
    width = inp.v.shape[-1]
    if q_d.shape[-1] == width:
        return q_d, k_d
    pad = width - q_d.shape[-1]
    return F.pad(q_d, (0, pad)), F.pad(k_d, (0, pad))


def leading_rows_maw(inp: DepthInputs, weights: torch.Tensor, rows: int, dropout_p: float = 0.0) -> torch.Tensor:
    """``O_maw`` of the first ``rows`` query rows alone, ``[B, H, rows, Dh]``, with autograd: what a layer computes
    when only those rows of its output are read (the last layer under ``prefix.first_token_logits``). The ``D``
    maps are ``[rows x L]``, a row of a map each, so they are made whole, in :func:`map_dtype`. Dropout is drawn as
    the full paths draw it: one mask on the combined map, or, with a score bias, one per depth (as
    :func:`combine_depths`)."""
    work = map_dtype(inp.v)
    with torch.autocast(inp.v.device.type, enabled=False):
        scores = _leading_scores(inp, rows, work)  # [B, H, D, rows, L]
        if inp.allowed is not None:
            scores = scores.masked_fill(~inp.allowed[:, :, None, :rows], torch.finfo(work).min)
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0 and inp.bias is not None:
            probs = F.dropout(probs, dropout_p)
        w = weights.view(weights.shape[0], 1, -1) if weights.dim() == 2 else weights  # [B, 1|H, D]
        combined = (probs * w.to(work)[..., None, None]).sum(2)
        if dropout_p > 0 and inp.bias is None:
            combined = F.dropout(combined, dropout_p)
        return torch.matmul(combined, inp.v.to(work)).to(inp.v.dtype)


def _leading_scores(inp: DepthInputs, rows: int, work: torch.dtype) -> torch.Tensor:
    """Every depth's scores of the first ``rows`` query rows, scaled and biased: ``[B, H, D, rows, L]``."""
    if inp.k_factors is not None:  # q_d k^T + (q_d U_d) (x V_d)^T: no full-width key per depth
        x_down, up = inp.k_factors
        q = inp.q_stack[:, :, :, :rows].to(work)
        b, h, depth, r, width = q.shape  # the depths' rows as rows of one product: no broadcast copy of k
        scores = torch.matmul(q.reshape(b, h, depth * r, width), inp.k[0].to(work).transpose(-1, -2))
        low = torch.einsum("bhdqr,bdlr->bhdql", torch.einsum("bhdqe,hder->bhdqr", q, up.to(work)), x_down.to(work))
        return ((scores.view(b, h, depth, r, -1) + low) * depth_scales(inp, work)).to(work)
    per_depth = []
    for d in range(inp.depth):
        s = torch.matmul(inp.q[d][:, :, :rows].to(work), inp.k[d].to(work).transpose(-1, -2)) * inp.scale[d]
        if inp.bias is not None:
            extra = inp.bias(d, None, rows=slice(0, rows))
            if extra is not None:
                s = s + extra.to(work)
        per_depth.append(s)
    return torch.stack(per_depth, dim=2)


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
