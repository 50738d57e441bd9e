"""`DepthwiseMAWSelfAttention`: the drop-in wrapper around a pretrained self-attention module.

It keeps the original module as ``base_layer`` (its weights are reused, not copied), computes the original output
``O_orig`` with it, computes ``O_maw`` from the same projections (docs/MAW.md sections 1-4) and returns
``(1 - alpha) * O_orig + alpha * O_maw`` in the original's output format (section 5).
"""

from __future__ import annotations

import importlib
import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from maw_reranker.maw.adapters import AttentionAdapter, adapter_for
from maw_reranker.maw.combined_attention import combined_attention
from maw_reranker.maw.config import MAWConfig
from maw_reranker.maw.functional import (DepthInputs, combine_depths, depth_statistics, explicit_maw, fix_empty_rows,
                                         leading_rows_maw, selected_attention)
from maw_reranker.maw.gating import DepthGating, GateDecision


# Devices on which inference without statistics and training without attention dropout take one fused attention
# call per depth instead of the explicit path (which does D times less A @ V work but holds a chunk's maps). On a CPU
# the explicit path is faster in every measured case but one (benchmarks/bench_maw_paths.py, docs/maw.md). "cuda" is
# an expectation, not a measurement: that fused kernels win there by avoiding the memory traffic is unmeasured until
# gpu_check.py's `paths` step has run on a GPU.
FUSED_DEVICES = frozenset({"cuda"})


class DepthwiseMAWSelfAttention(nn.Module):
    """Multi-Attention-Weight self-attention wrapping ``base_layer``. Build it with :func:`wrap_attention` (or
    :func:`maw_reranker.patch_model`), which also makes it an instance of the wrapped class so that code checking
    ``isinstance`` (e.g. transformers' attention-output recording) keeps working."""

    def __init__(self, base_layer: nn.Module, config: MAWConfig, layer_index: int = 0):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        # Shared, not copied: the patched model, every MAW layer and its gating read this one object, so a
        # setting changed there (set_maw_strength) is changed everywhere at once.
        self.maw_config = config
        self.layer_index = layer_index
        self.adapter: AttentionAdapter = adapter_for(base_layer)
        heads, width = self.adapter.num_heads, self.adapter.head_dim
        # Everything MAW creates lives where the wrapped layer's weights live, never on torch's default device.
        ref = base_layer.get_submodule(self.adapter.q_name).weight
        factory = {"device": ref.device, "dtype": ref.dtype}
        if config.depth_source == "split":
            self.feature_slices = self.adapter.depth_slices(width, self.depth)
        else:
            self.feature_slices = [(0, width)] * self.depth
            hidden, rank, out = self.adapter.hidden_size, config.depth_rank, heads * width
            self.maw_down = nn.Parameter(lora_down_init(torch.empty(2, self.depth, hidden, rank, **factory)))
            # Zero up-projection: every depth starts exactly at W_Q / W_K (LoRA's init).
            self.maw_up = nn.Parameter(torch.zeros(2, self.depth, rank, out, **factory))
        self.gating = DepthGating(config, self.adapter.hidden_size, heads, layer_index, **factory)
        self.last_depth_weights: Optional[torch.Tensor] = None
        self.last_selected_depth: Optional[torch.Tensor] = None
        self._forced_memo: Optional[tuple] = None  # see _unforced_parts
        self._stats_memo: Optional[tuple] = None  # see _statistics
        # Set while only the first `query_rows` rows of this layer's output are read (`prefix.first_token_logits`,
        # which also cuts the residual to them): the output has those rows only.
        self.query_rows: Optional[int] = None

    @property
    def depth(self) -> int:
        return int(self.maw_config.depth_dim)

    @property
    def maw_strength(self) -> float:
        """alpha, read from the shared config (change it with :func:`maw_reranker.maw.patcher.set_maw_strength`)."""
        return float(self.maw_config.maw_strength)

    # -- building blocks --------------------------------------------------------------------------------------
    def depth_inputs(self, bound: dict, qkv: Optional[tuple] = None,
                     rows: Optional[int] = None) -> tuple[DepthInputs, torch.Tensor]:
        """Per-depth queries/keys for this forward pass, and the layer input used to make the queries (all of it).
        With ``rows``, the queries (and the mask's query rows) of the first ``rows`` positions only, every key."""
        base, adapter = self.base_layer, self.adapter
        q, k, v = qkv if qkv is not None else adapter.project(base, bound)
        batch, _, length, _ = v.shape
        allowed = adapter.allowed_mask(bound, batch, length)
        if allowed is None:
            key_valid = torch.ones(batch, length, dtype=torch.bool, device=v.device)
        else:
            key_valid = allowed[:, 0].any(dim=-2)
        allowed = fix_empty_rows(allowed)
        x_kv, x_q = adapter.inputs(bound)
        x_rows = x_q
        if rows is not None:  # cut before the depths are made: no depth-sized gradient for rows nobody reads
            q, x_rows = q[:, :, :rows], x_q[:, :rows]
            allowed = None if allowed is None else allowed[:, :, :rows]
        scales = [adapter.score_scale(e - s) for s, e in self.feature_slices]
        shared = {"v": v, "allowed": allowed, "key_valid": key_valid}
        if self.maw_config.depth_source == "split":
            q_stack, k_stack = _stacked_slices(q, self.feature_slices), _stacked_slices(k, self.feature_slices)
            if q_stack is None:  # depths of unequal widths
                q_list, k_list = _split_slices(q, self.feature_slices), _split_slices(k, self.feature_slices)
        elif rows is not None and adapter.plain_deltas:
            # A few query rows against every key: keys as factors, so no D full-width keys are made
            q_stack = self._projected(q, x_rows, 0, bound)
            inp = DepthInputs(q=list(q_stack.unbind(2)), k=[k] * self.depth, scale=scales, q_stack=q_stack,
                              k_factors=self._key_factors(x_kv), **shared)
            return inp, x_q
        else:
            q_stack, k_stack = self._projected(q, x_rows, 0, bound), self._projected(k, x_kv, 1, bound)
        if q_stack is not None:
            inp = DepthInputs.stacked(q_stack, k_stack, scales, **shared)
        else:
            inp = DepthInputs(q=q_list, k=k_list, scale=scales, **shared)
        inp.bias = adapter.depth_bias(base, bound, inp.q, inp.k, self.feature_slices)
        return inp, x_q

    def _key_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x V_d [B, D, L, r], U_d [H, D, Dh, r])``: the keys' low-rank deltas of ``depth_source='project'``
        as factors (``DepthInputs.k_factors``)."""
        down = torch.einsum("bli,dir->bdlr", x, self.maw_down[1].to(x.dtype))
        heads, width = self.adapter.num_heads, self.adapter.head_dim
        up = self.maw_up[1].to(x.dtype).view(self.depth, -1, heads, width).permute(2, 0, 3, 1)
        return down, up

    def _projected(self, base_heads: torch.Tensor, x: torch.Tensor, which: int, bound: dict) -> torch.Tensor:
        """``[B, H, D, L, Dh]``: the heads ``base_heads`` plus each depth's low-rank delta, made as one tensor (D
        separate ones would cost D zero-filled, delta-sized gradients in backward)."""
        delta = torch.einsum("bli,dir->bldr", x, self.maw_down[which].to(x.dtype))
        delta = torch.einsum("bldr,dro->bldo", delta, self.maw_up[which].to(x.dtype))  # [B, L, D, H*Dh]
        batch, length = delta.shape[:2]
        heads, width = self.adapter.num_heads, self.adapter.head_dim
        delta = delta.view(batch, length, self.depth, heads, width).permute(0, 2, 3, 1, 4)  # [B, D, H, L, Dh] view
        # The deltas get the position encoding q and k got (ModernBERT's rotary embedding), as W_Q + U V^T would.
        return base_heads.unsqueeze(2) + self.adapter.encode_positions(bound, delta).transpose(1, 2)

    def _pooled(self, inp: DepthInputs, x_q: torch.Tensor) -> Optional[torch.Tensor]:
        if self.gating.mode != "gate":
            return None
        valid = inp.key_valid.unsqueeze(-1).to(x_q.dtype)
        return (x_q * valid).sum(1) / valid.sum(1).clamp_min(1)

    def _record(self, decision: GateDecision) -> None:
        self.gating.record(decision)
        w = decision.weights.detach().float()
        if w.dim() == 3:
            w = w.mean(1)
        self.last_depth_weights = w
        self.last_selected_depth = w.argmax(-1)

    def attention_dropout(self) -> float:
        """The wrapped layer's attention-dropout probability in training mode, 0 in eval mode."""
        return self.adapter.attention_dropout(self.base_layer) if self.training else 0.0

    def maw_output(self, bound: dict, want_map: bool = False, qkv: Optional[tuple] = None,
                   rows: Optional[int] = None):
        """``(O_maw [B, L, H*Dh], A_sel or None)`` for the bound forward arguments; with ``rows``, ``O_maw`` of the
        first ``rows`` query rows alone (``[B, rows, H*Dh]``, no map).

        Padded query rows of both are zero, in every path (as in the reference)."""
        forced = self.gating.forced_depth is not None
        need_stats = self.gating.needs_stats and not (forced and not self.gating.forced_logits)
        full = None
        if rows is not None and need_stats and not self.adapter.plain_deltas:
            # one set of inputs for the statistics and the rows: their score bias draws its dropout once (DeBERTa)
            full, x_q = self.depth_inputs(bound, qkv)
            inp = full.first_rows(rows)
        else:
            inp, x_q = self.depth_inputs(bound, qkv, rows)
        pooled = self._pooled(inp, x_q)
        batch, device = inp.v.shape[0], inp.v.device
        needs_grad = torch.is_grad_enabled() and (inp.v.requires_grad
                                                  or any(p.requires_grad for p in self.maw_parameters()))
        dropout_p = self.attention_dropout()
        query_valid = inp.key_valid[:, None, :, None]
        if rows is not None:
            # Statistics still read every row's maps (MAW.md section 3); the output needs a row of each map.
            stats = None
            if need_stats:
                with torch.no_grad():
                    stats = self._statistics(full if full is not None else self.depth_inputs(bound, qkv)[0])
            decision = self.gating.decide(batch, stats, pooled, device)
            self._record(decision)
            o = leading_rows_maw(inp, decision.weights, rows, dropout_p)
            return self.adapter.merge_heads(o * query_valid[:, :, :rows].to(o.dtype)), None
        if (not needs_grad and not forced and dropout_p == 0.0 and not want_map and not self.gating.needs_stats
                and device.type in FUSED_DEVICES):
            # Inference without statistics where fused kernels win (benchmarks/bench_maw_paths.py): one fused
            # attention call per depth, no map in memory.
            decision = self.gating.decide(batch, None, pooled, device)
            self._record(decision)
            o, a_sel = combine_depths(inp, decision.weights), None
        elif not needs_grad and not forced and dropout_p == 0.0:
            # Inference: each depth's map computed once per chunk, statistics and combination fused.
            parts = []

            def decide(rows, stats_rows):
                part = self.gating.decide(rows.stop - rows.start, stats_rows,
                                          None if pooled is None else pooled[rows], device)
                parts.append(part)
                return part.weights

            o, a_sel, _ = inference_path(inp, want_map)(inp, decide, want_map=want_map,
                                                        need_stats=self.gating.needs_stats,
                                                        chunk=self.maw_config.stat_chunk)
            self._record(GateDecision.concat(parts))
        else:
            # Training, forced depths, or train mode with dropout (with or without autograd, so that dropout does
            # not depend on whether gradients are on): statistics without autograd, then the depths combined.
            stats = self._statistics(inp) if need_stats else None
            decision = self.gating.decide(batch, stats, pooled, device)
            self._record(decision)
            weights = decision.weights
            hard = decision.hard and not weights.requires_grad
            if inp.bias is None and (dropout_p > 0 or device.type not in FUSED_DEVICES):
                # Depths combined, then one dropout mask on the combined map, as the wrapped layer drops entries of
                # its one map (maw/combined_attention.py; on a CPU also the faster path without dropout).
                o = combined_attention(inp, weights, dropout_p=dropout_p, hard=hard)
            else:
                # One fused attention call per depth: no map in memory (a score bias, DeBERTa's, takes this path
                # with dropout too, each depth then drawing its own mask).
                o = combine_depths(inp, weights, dropout_p=dropout_p, hard=hard)
            a_sel = selected_attention(inp, weights) if want_map else None
        o = o * query_valid.to(o.dtype)
        if a_sel is not None:
            a_sel = a_sel * query_valid.to(a_sel.dtype)
        return self.adapter.merge_heads(o), a_sel

    # -- nn.Module --------------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        bound = self.adapter.bind(args, kwargs)
        rows = None if self.adapter.wants_attentions(self.base_layer, bound) else getattr(self, "query_rows", None)
        qkv, out_orig, attn_orig = self._unforced_parts(args, kwargs, bound, rows)
        want_map = attn_orig is not None and self.adapter.wants_attentions(self.base_layer, bound)
        out_maw, a_sel = self.maw_output(bound, want_map, qkv, rows)
        alpha = self.maw_strength
        out = self.adapter.finish(self.base_layer, (1.0 - alpha) * out_orig + alpha * out_maw.to(out_orig.dtype))
        attn = None
        if want_map:
            attn = (1.0 - alpha) * attn_orig + alpha * a_sel.to(attn_orig.dtype)
        return out, attn

    def _statistics(self, inp: DepthInputs) -> torch.Tensor:
        """The depths' statistics of the training path (no autograd). While ``gating.repeated_inputs`` is set (GRPO's
        samples, one per pass), a pass whose queries, keys and masks equal the previous pass's reuses its statistics,
        which depend on nothing else (attention dropout comes after them; dropout inside the projections, LoRA's,
        changes q and k, so it is seen). A score bias (DeBERTa's, with its own dropout) is never reused."""
        if not self.gating.repeated_inputs or inp.bias is not None:
            self._stats_memo = None
            return depth_statistics(inp, self.maw_config.stat_chunk)
        key = (inp.q_stack if inp.q_stack is not None else inp.q, inp.k_stack if inp.k_stack is not None else inp.k,
               inp.scale, inp.allowed, inp.key_valid)
        memo = getattr(self, "_stats_memo", None)
        if memo is not None and _same_inputs(memo[0], key):
            return memo[1]
        stats = depth_statistics(inp, self.maw_config.stat_chunk)
        self._stats_memo = (_snapshot(key), stats)
        return stats

    def _unforced_parts(self, args: tuple, kwargs: dict, bound: dict, rows: Optional[int] = None) -> tuple:
        """``(q, k, v)``, ``O_orig`` and the original map. None of them depends on the depth, so forced-depth passes
        in eval mode without autograd (the router oracle's D passes, ``train/routing.py``) take them from the
        previous such pass when its inputs were equal (by value, and not changed in place since), the wrapped
        layer's weights unchanged (parameter versions; an edit through ``.data`` is not seen) and autocast the
        same: in a cached top-layer step the D passes then project and attend once. With ``rows``, ``O_orig`` of
        the first ``rows`` query rows."""
        reusable = self.gating.forced_depth is not None and not self.training and not torch.is_grad_enabled()
        if not reusable:
            self._forced_memo = None
            return self._original_parts(args, kwargs, bound, rows)
        device = next(self.base_layer.parameters()).device.type
        state = ([(id(p), p._version) for p in self.base_layer.parameters()],
                 torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), rows)
        memo = getattr(self, "_forced_memo", None)
        if memo is not None and memo[1] == state and _same_inputs(memo[0], bound):
            return memo[2]
        parts = self._replicated_parts(args, kwargs, int(getattr(self.gating, "replicas", 1)), rows)
        if parts is None:
            parts = self._original_parts(args, kwargs, bound, rows)
        self._forced_memo = (_snapshot(bound), state, parts)
        return parts

    def _replicated_parts(self, args: tuple, kwargs: dict, copies: int, rows: Optional[int] = None) -> Optional[tuple]:
        """The parts of a batch of ``copies`` equal copies (the oracle's batched pass, copy-major), computed for the
        first copy and repeated; None when the batch is not such copies (every tensor argument whose leading size
        is the batch's must repeat its first copy exactly)."""
        hidden = self.adapter.inputs(self.adapter.bind(args, kwargs))[0]
        batch = hidden.shape[0]
        if copies <= 1 or batch % copies:
            return None
        first = _first_copy((args, kwargs), batch, batch // copies, copies)
        if first is None:
            return None
        sub_args, sub_kwargs = first
        qkv, out, attn = self._original_parts(sub_args, sub_kwargs, self.adapter.bind(sub_args, sub_kwargs), rows)

        def repeat(t):
            return None if t is None else t.repeat(copies, *([1] * (t.dim() - 1)))

        return tuple(repeat(t) for t in qkv), repeat(out), repeat(attn)

    def _original_parts(self, args: tuple, kwargs: dict, bound: dict, rows: Optional[int] = None) -> tuple:
        """``(q, k, v)``, ``O_orig`` and the original map (None with ``rows``: ``O_orig`` of the first rows)."""
        qkv = self.adapter.project(self.base_layer, bound)
        if rows is not None:
            # [B, H, L, Dh] views of [B, L, H*Dh] made contiguous once: the few-row products would copy them per
            # depth (batch dims B, H not collapsible), and the forced passes keep these
            qkv = (qkv[0], qkv[1].contiguous(), qkv[2].contiguous())
            out = self.adapter.original_rows(self.base_layer, bound, qkv, rows)
            if out is None:  # the module computes every row: cut after
                out = self.adapter.call_original(self.base_layer, args, kwargs, bound, qkv)[0][:, :rows]
            return qkv, out, None
        return (qkv, *self.adapter.call_original(self.base_layer, args, kwargs, bound, qkv))

    def release_memos(self) -> None:
        """Drop what forced passes and repeated inputs kept (``train/routing.py`` calls it when they end)."""
        self._forced_memo = None
        self._stats_memo = None

    def maw_parameters(self):
        """The parameters MAW added (what MAW-only training and saving touch)."""
        return [p for n, p in self.named_parameters() if not n.startswith("base_layer.")]

    def extra_repr(self) -> str:
        c = self.maw_config
        return (f"layer={self.layer_index}, depth={c.depth_dim}, source={c.depth_source}, gating={c.gating_mode}, "
                f"strength={c.maw_strength}")


def _first_copy(value, batch: int, rows: int, copies: int):
    """``value`` (arguments, nested) with every tensor of leading size ``batch`` cut to its first ``rows``, or None
    where one of them is not ``copies`` equal copies of those rows."""
    if torch.is_tensor(value):
        if value.dim() == 0 or value.shape[0] != batch:
            return value
        parts = value.unflatten(0, (copies, rows))
        return value[:rows] if bool((parts == parts[:1]).all()) else None
    if isinstance(value, dict):
        out = {k: _first_copy(v, batch, rows, copies) for k, v in value.items()}
        return None if any(out[k] is None and value[k] is not None for k in value) else out
    if isinstance(value, (list, tuple)):
        out = [_first_copy(v, batch, rows, copies) for v in value]
        if any(o is None and v is not None for o, v in zip(out, value)):
            return None
        return type(value)(out) if type(value) in (list, tuple) else value
    return value


class _Kept(NamedTuple):
    """A tensor as a memo keeps it: detached (no graph kept alive; deep-copyable) with its version counter then
    (-1 for an inference tensor, which has none: never taken as equal)."""
    tensor: torch.Tensor
    version: int


def _snapshot(value):
    """Forward arguments as a memo keeps them: tensors as :class:`_Kept`, containers item by item."""
    if torch.is_tensor(value):  # inference tensors keep no version counter: never equal (-1)
        return _Kept(value.detach(), -1 if value.is_inference() else value._version)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(v) for v in value]
    return value


def _same_inputs(kept, b) -> bool:
    """Whether forward arguments ``b`` equal the ones kept in ``kept`` (:func:`_snapshot`): tensors by value (and
    dtype, shape, device), and a kept tensor changed in place since is never equal; containers item by item;
    anything else by identity or ``==``."""
    if isinstance(kept, _Kept):
        t = kept.tensor
        return (torch.is_tensor(b) and kept.version >= 0 and t._version == kept.version and b.shape == t.shape
                and b.dtype == t.dtype and b.device == t.device and bool(torch.equal(t, b)))
    if torch.is_tensor(b):
        return False
    if isinstance(kept, dict) and isinstance(b, dict):
        return kept.keys() == b.keys() and all(_same_inputs(kept[k], b[k]) for k in kept)
    if isinstance(kept, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(kept) == len(b) and all(_same_inputs(x, y) for x, y in zip(kept, b))
    if kept is b:
        return True
    try:
        return bool(kept == b)
    except Exception:  # objects without a usable ==: not provably equal
        return False


def _tiles_width(slices: list[tuple[int, int]], width: int) -> bool:
    """Whether the feature slices cut ``[0, width)`` into consecutive pieces, in order."""
    return [s for s, _ in slices] == [0] + [e for _, e in slices[:-1]] and slices[-1][1] == width


def _stacked_slices(x: torch.Tensor, slices: list[tuple[int, int]]) -> Optional[torch.Tensor]:
    """``x [B, H, L, Dh]``'s depth slices as one ``[B, H, D, L, w]`` view where they are of one width and tile the
    head in order (the batched paths then read them without a copy, and backward writes their gradient into q's
    directly); None otherwise."""
    if len({e - s for s, e in slices}) != 1 or not _tiles_width(slices, x.shape[-1]):
        return None
    return x.unflatten(-1, (len(slices), slices[0][1] - slices[0][0])).transpose(2, 3)


def _split_slices(x: torch.Tensor, slices: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The depth slices of ``x`` as views: by one ``split`` where they tile the head (its backward concatenates the
    D gradients, where D separate slices would each zero-fill an ``x``-sized gradient)."""
    if _tiles_width(slices, x.shape[-1]):
        return list(torch.split(x, [e - s for s, e in slices], dim=-1))
    return [x[..., s:e] for s, e in slices]


def inference_path(inp: DepthInputs, want_map: bool):
    """``functional.explicit_maw`` or, on CUDA, its Triton drop-in (``maw/triton_maw.py``: statistics and output
    without any map in memory) where Triton is installed and supports the inputs; otherwise one log line per
    reason says why not. Imported lazily: Triton is optional, and importing it costs time on CPU-only set-ups.
    That the kernels beat the explicit path on a GPU is an expectation until gpu_check.py's `triton` step runs."""
    if inp.v.device.type != "cuda":
        return explicit_maw
    try:  # by name: the portable modeling file (cross_encoder/portable.py) embeds this module but not the kernels
        triton_maw = importlib.import_module("maw_reranker.maw.triton_maw")
    except ImportError:
        return explicit_maw

    reason = triton_maw.unsupported(inp, want_map)
    if reason is None:
        return triton_maw.triton_explicit_maw
    triton_maw.log_fallback(reason)
    return explicit_maw


def lora_down_init(down: torch.Tensor) -> torch.Tensor:
    """LoRA's init for each ``[hidden, rank]`` down-projection in ``down [..., hidden, rank]``: Kaiming-uniform
    (a = sqrt 5) of the ``[rank, hidden]`` weight of ``nn.Linear(hidden, rank)``, so fan-in is the hidden size and
    values are uniform in +-1/sqrt(hidden). (Fan-in = rank, as a flat view gives, is sqrt(hidden/rank) too wide.)"""
    with torch.no_grad():
        for matrix in down.view(-1, *down.shape[-2:]):
            nn.init.kaiming_uniform_(matrix.T, a=math.sqrt(5))
    return down


_WRAPPER_CLASSES: dict[type, type] = {}


def wrapper_class_for(base_cls: type) -> type:
    """A subclass of both DepthwiseMAWSelfAttention and ``base_cls`` (so ``isinstance(layer, base_cls)`` holds)."""
    if base_cls not in _WRAPPER_CLASSES:
        name = f"MAW{base_cls.__name__}"
        cls = type(name, (DepthwiseMAWSelfAttention, base_cls), {"__module__": __name__})
        globals()[name] = cls  # importable by name, so pickling works
        _WRAPPER_CLASSES[base_cls] = cls
    return _WRAPPER_CLASSES[base_cls]


def wrap_attention(base_layer: nn.Module, config: MAWConfig, layer_index: int = 0) -> DepthwiseMAWSelfAttention:
    return wrapper_class_for(type(base_layer))(base_layer, config, layer_index)
