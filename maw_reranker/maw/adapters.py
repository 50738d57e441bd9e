"""Per-architecture glue: how to read Q/K/V, the mask and (DeBERTa) relative-position terms from a wrapped
self-attention module, how to call it for ``O_orig``, and how to shape the result like it does. ModernBERT's adapter
lives in ``adapters_modernbert.py``."""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn

from maw_reranker.maw.functional import depth_slices

SUPPORTED_ARCHITECTURES = {
    # model_type -> self-attention class name
    "bert": "BertSelfAttention",
    "roberta": "RobertaSelfAttention",
    "xlm-roberta": "XLMRobertaSelfAttention",
    "camembert": "CamembertSelfAttention",
    "electra": "ElectraSelfAttention",
    "deberta-v2": "DisentangledSelfAttention",
    "modernbert": "ModernBertAttention",
}


class AttentionAdapter:
    """Reads a BERT-style self-attention module (``query``/``key``/``value`` linears, HF attention interface)."""

    q_name, k_name, v_name = "query", "key", "value"
    scale_factor = 1  # DeBERTa divides scores by sqrt(width * number of score terms)
    # depth_source='project' deltas are linear in the input alone (no position encoding, no score term reads the
    # keys), so scores of a few query rows may take the keys' deltas as factors (DepthInputs.k_factors)
    plain_deltas = True

    def __init__(self, base: nn.Module):
        self.signature = inspect.signature(base.forward)
        q = getattr(base, self.q_name)
        self.num_heads = int(getattr(base, "num_attention_heads"))
        self.head_dim = int(getattr(base, "attention_head_size"))
        self.hidden_size = q.in_features

    def bind(self, args: tuple, kwargs: dict) -> dict:
        bound = self.signature.bind_partial(*args, **kwargs)
        merged = dict(bound.arguments)
        merged.update(merged.pop("kwargs", {}) or {})
        return merged

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, H*Dh] -> [B, H, L, Dh]``."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def depth_slices(self, width: int, depth: int) -> list[tuple[int, int]]:
        """The ``depth_source='split'`` feature slices of the q and k that :meth:`project` returns."""
        return depth_slices(width, depth)

    def encode_positions(self, bound: dict, delta: torch.Tensor) -> torch.Tensor:
        """What :meth:`project` does to q and k after the linear map, applied to the per-depth deltas
        ``[B, D, H, L, Dh]`` of ``depth_source='project'``: nothing here (a view stays a view); ModernBERT's rotary
        embedding."""
        return delta

    def inputs(self, bound: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states that make keys/values, hidden states that make queries)."""
        hidden = bound["hidden_states"]
        return hidden, hidden

    def project(self, base: nn.Module, bound: dict):
        x_kv, x_q = self.inputs(bound)
        q = self.heads(getattr(base, self.q_name)(x_q))
        k = self.heads(getattr(base, self.k_name)(x_kv))
        v = self.heads(getattr(base, self.v_name)(x_kv))
        return q, k, v

    def allowed_mask(self, bound: dict, batch: int, length: int) -> Optional[torch.Tensor]:
        """Boolean ``[B, 1|H, L, L]`` mask, True where attention is allowed, or None (no padding)."""
        mask = bound.get("attention_mask")
        if mask is None:
            return None
        if mask.dim() == 2:  # [B, L] padding mask
            mask = mask[:, None, None, :]
        elif mask.dim() == 3:
            mask = mask[:, None]
        if mask.dtype == torch.bool:
            allowed = mask
        elif mask.is_floating_point():
            allowed = mask > torch.finfo(mask.dtype).min / 2  # additive masks use finfo.min (or -inf)
        else:
            allowed = mask > 0
        return allowed.expand(batch, allowed.shape[1], length, length)

    def wants_attentions(self, base: nn.Module, bound: dict) -> bool:
        """Whether the model asked for attention maps: the keyword when the caller passed one, else the model
        config's ``output_attentions`` (transformers 5 records maps by hooks and passes no keyword then)."""
        asked = bound.get("output_attentions")
        if asked is None:
            asked = getattr(getattr(base, "config", None), "output_attentions", False)
        return bool(asked)

    def attention_dropout(self, base: nn.Module) -> float:
        """The wrapped layer's attention-probability dropout."""
        return float(getattr(getattr(base, "dropout", None), "p", 0.0))

    def finish(self, base: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """What the wrapped module does after attention, applied once to the blended output (nothing here;
        ModernBERT's output projection)."""
        return out

    def call_original(self, base: nn.Module, args: tuple, kwargs: dict, bound: dict, qkv: tuple):
        """``O_orig`` and the original attention map (or None), through the model's own attention function.

        BERT-style modules compute ``interface(q, k, v, mask, **kwargs)``; we hand that same interface the
        projections already made for MAW instead of making them twice. A MAW layer is an encoder self-attention:
        a KV cache (decoder use) would make MAW's keys differ from the original's, so it is refused."""
        if bound.get("cache") is not None:
            raise ValueError("MAW layers are encoder self-attention and do not support a KV cache (cache=...)")
        interface = self._interface(base)
        if interface is None:
            return self._call_forward(base, args, kwargs)
        q, k, v = qkv
        extra = {key: value for key, value in bound.items() if key not in ("self", "hidden_states", "attention_mask",
                                                                           "cache")}
        out, weights = interface(base, q, k, v, bound.get("attention_mask"),
                                 dropout=0.0 if not base.training else base.dropout.p, scaling=base.scaling, **extra)
        return out.reshape(*out.shape[:2], -1).contiguous(), weights

    def original_rows(self, base: nn.Module, bound: dict, qkv: Optional[tuple], rows: int) -> Optional[torch.Tensor]:
        """``O_orig`` of the first ``rows`` query rows alone (``[B, rows, H*Dh]``, every key), through the model's
        own attention function, from ``qkv`` (made here when None), or None where it cannot be asked for fewer
        queries than keys here (no attention interface, a KV cache, a mask that is not a ``[B, 1|H, L, L]`` tensor:
        flex attention's block mask)."""
        interface = self._interface(base)
        mask = bound.get("attention_mask")
        if interface is None or bound.get("cache") is not None:
            return None
        if mask is not None:
            if not torch.is_tensor(mask) or mask.dim() != 4:
                return None
            mask = mask[:, :, :rows]
        q, k, v = qkv if qkv is not None else self.project(base, bound)
        extra = {key: value for key, value in bound.items() if key not in ("self", "hidden_states", "attention_mask",
                                                                           "cache")}
        out, _ = interface(base, q[:, :, :rows], k, v, mask, dropout=0.0 if not base.training else base.dropout.p,
                           scaling=base.scaling, **extra)
        return out.reshape(*out.shape[:2], -1).contiguous()

    @staticmethod
    def _interface(base: nn.Module):
        import sys

        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = getattr(sys.modules.get(type(base).__module__), "eager_attention_forward", None)
        config = getattr(base, "config", None)
        if eager is None or config is None or not hasattr(base, "scaling"):
            return None
        return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)

    @staticmethod
    def _call_forward(base: nn.Module, args: tuple, kwargs: dict):
        # Call forward directly, not __call__: output-capturing hooks belong to the wrapper, which reports the
        # blended attention; the inner module must not record a second, unblended map.
        out = base.forward(*args, **kwargs)
        return out[0], (out[1] if len(out) > 1 else None)

    def score_scale(self, width: int) -> float:
        return (width * self.scale_factor) ** -0.5

    def depth_bias(self, base: nn.Module, bound: dict, q_depth: list, k_depth: list, feature_slices: list):
        """Additive per-depth score terms (None for BERT-style attention)."""
        return None

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], self.num_heads * self.head_dim)


class DebertaV2Adapter(AttentionAdapter):
    """DeBERTa-v2/v3 disentangled attention: content-content plus content-to-position and position-to-content
    terms. All three are per-head dot products, so a depth slice of the head features applies to each of them."""

    q_name, k_name, v_name = "query_proj", "key_proj", "value_proj"
    plain_deltas = False  # the p2c term reads each depth's keys

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.scale_factor = 1 + sum(t in base.pos_att_type for t in ("c2p", "p2c"))

    def call_original(self, base, args, kwargs, bound, qkv):
        return self._call_forward(base, args, kwargs)

    def original_rows(self, base, bound, qkv, rows):
        return None  # the module makes its own projections and relative-position terms: a full call, then cut

    def inputs(self, bound: dict):
        hidden = bound["hidden_states"]
        query_states = bound.get("query_states")
        return hidden, (hidden if query_states is None else query_states)

    def allowed_mask(self, bound: dict, batch: int, length: int):
        mask = bound.get("attention_mask")
        if mask is None:
            return None
        if mask.dim() == 2:
            mask = mask[:, None, None, :] * mask[:, None, :, None]
        elif mask.dim() == 3:
            mask = mask[:, None]
        return mask.bool().expand(batch, mask.shape[1], length, length)

    def depth_bias(self, base, bound, q_depth, k_depth, feature_slices):
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position, build_rpos

        if not base.relative_attention:
            return None
        x_q = q_depth[0]
        relative_pos = bound.get("relative_pos")
        if relative_pos is None:
            relative_pos = build_relative_position(x_q, k_depth[0], bucket_size=base.position_buckets,
                                                   max_position=base.max_relative_positions)
        while relative_pos.dim() > 2:
            relative_pos = relative_pos[0]  # positions are shared across the batch and heads
        relative_pos = relative_pos.to(device=x_q.device, dtype=torch.long)
        span = base.pos_ebd_size
        rel = base.pos_dropout(bound["rel_embeddings"])[: span * 2, :].unsqueeze(0)
        if base.share_att_key:
            pos_key = self.heads(base.key_proj(rel))[0] if "c2p" in base.pos_att_type else None
            pos_query = self.heads(base.query_proj(rel))[0] if "p2c" in base.pos_att_type else None
        else:
            pos_key = self.heads(base.pos_key_proj(rel))[0] if "c2p" in base.pos_att_type else None
            pos_query = self.heads(base.pos_query_proj(rel))[0] if "p2c" in base.pos_att_type else None
        c2p_index = torch.clamp(relative_pos + span, 0, span * 2 - 1)
        r_pos = build_rpos(x_q, k_depth[0], relative_pos, position_buckets=base.position_buckets,
                           max_relative_positions=base.max_relative_positions)
        while r_pos.dim() > 2:
            r_pos = r_pos[0]
        p2c_index = torch.clamp(-r_pos.to(x_q.device).long() + span, 0, span * 2 - 1)
        scales = [self.score_scale(e - s) for s, e in feature_slices]

        def bias(d: int, index, heads: slice = slice(None), rows: slice = slice(None)):
            """Depth d's c2p + p2c terms ``[b, h, r, L]`` for the examples in ``index``, the heads in ``heads`` and
            the query rows in ``rows`` (a tile of the inference path computes only its own part)."""
            q = q_depth[d] if index is None else q_depth[d][index]
            k = k_depth[d] if index is None else k_depth[d][index]
            q, k = q[:, heads], k[:, heads]
            s, e = feature_slices[d]
            length_k = k.shape[-2]
            query_rows = torch.arange(q.shape[-2], device=q.device)[rows]
            q = q[:, :, rows]
            total = 0
            if pos_key is not None:  # content -> position
                c2p = torch.einsum("bhqw,hpw->bhqp", q, pos_key[heads, :, s:e])
                idx = c2p_index[query_rows, :length_k].expand(q.shape[0], q.shape[1], -1, -1)
                total = total + torch.gather(c2p, -1, idx) * scales[d]
            if pos_query is not None:  # position -> content
                p2c = torch.einsum("bhkw,hpw->bhkp", k, pos_query[heads, :, s:e])
                idx = p2c_index[:length_k, query_rows].expand(k.shape[0], k.shape[1], -1, -1)
                total = total + torch.gather(p2c, -1, idx).transpose(-1, -2) * scales[d]
            return total if torch.is_tensor(total) else None

        return bias


def _modernbert_adapter(module: nn.Module) -> AttentionAdapter:
    from maw_reranker.maw.adapters_modernbert import ModernBertAdapter  # its own module (it imports this one)

    return ModernBertAdapter(module)


_ADAPTERS = {"DisentangledSelfAttention": DebertaV2Adapter, "ModernBertAttention": _modernbert_adapter}


def adapter_for(module: nn.Module) -> AttentionAdapter:
    name = type(module).__name__
    if name not in SUPPORTED_ARCHITECTURES.values():
        raise unsupported_error(name)
    if name == "DisentangledSelfAttention" and not hasattr(module, "query_proj"):
        raise unsupported_error(f"{name} (DeBERTa v1)")
    return _ADAPTERS.get(name, AttentionAdapter)(module)


def unsupported_error(what: Any) -> ValueError:
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())
    return ValueError(f"MAW cannot patch {what}: supported architectures are {supported}")
