"""ModernBERT glue (transformers 5's ``ModernBertAttention``): a fused ``Wqkv`` projection, rotary position
embeddings with one base per layer type (global and local), a bidirectional sliding window on local layers, and the
output projection ``Wo`` inside the attention module.

What each MAW depth sees: the queries and keys after the rotary embedding its encoder layer hands the module (the
local or the global one), and the layer's own mask (padding and, on local layers, ``|i - j| <= window``, exactly as
transformers builds it). A depth slice is made of whole rotary pairs (feature ``i`` with ``i + Dh/2``, which rotate
together), so every depth is itself a rotary attention over a band of frequencies whose scores depend on relative
positions only. To keep the layer's contiguous slices, q and k are handed over with their two halves interleaved
(``[q_0, q_h, q_1, q_{h+1}, ...]``); ``O_orig`` gets them back in the original order.

Attention implementations other than eager and sdpa (flash attention, which unpads inside its kernel; user-registered
ones) give the module a 2D padding mask or none; a patched layer then falls back to the padded path, sdpa with the
dense mask MAW uses, and says so once. Unpatched layers keep the model's implementation.
"""

from __future__ import annotations

import inspect
import logging
import sys

import torch
from torch import nn

from maw_reranker.maw.adapters import AttentionAdapter, unsupported_error
from maw_reranker.maw.functional import depth_slices, fix_empty_rows

logger = logging.getLogger(__name__)

DENSE_MASK_IMPLEMENTATIONS = ("eager", "sdpa")
# Keyword arguments of packed (varlen) batches: several sequences in one row, which MAW's per-example gating
# cannot separate.
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens", "max_length_q", "max_seqlen")
_fallback_logged: set[str] = set()


class ModernBertAdapter(AttentionAdapter):
    q_name = k_name = v_name = "Wqkv"
    plain_deltas = False  # rotary embedding of the deltas

    def __init__(self, base: nn.Module):
        self.signature = inspect.signature(base.forward)
        if "position_embeddings" not in self.signature.parameters:
            # transformers 4.x: the module rotates by itself and gets unpadded inputs under flash attention.
            raise unsupported_error("this transformers version's ModernBertAttention (MAW needs transformers >= 5 "
                                    "for ModernBERT)")
        self.num_heads = int(base.config.num_attention_heads)
        self.head_dim = int(base.head_dim)
        self.hidden_size = base.Wqkv.in_features
        if self.head_dim % 2:
            raise ValueError(f"ModernBERT head width {self.head_dim} is odd: rotary pairs need an even width")
        # The mask's window is |i - j| <= config.sliding_window; the module stores it + 1 (flash's convention).
        self.radius = None if base.sliding_window is None else int(base.sliding_window) - 1
        self.module_name = type(base).__module__  # a name, not the module: the adapter is deep-copied and pickled

    @property
    def functions(self):
        """The model's own module: its rotary embedding and eager attention."""
        return sys.modules[self.module_name]

    # -- features -------------------------------------------------------------------------------------------------
    def depth_slices(self, width: int, depth: int) -> list[tuple[int, int]]:
        half = width // 2
        if not 1 <= depth <= half:
            raise ValueError(f"depth_dim={depth} must be between 1 and half the head width ({half}) for "
                             "depth_source='split' on ModernBERT: each depth takes whole rotary pairs")
        return [(2 * s, 2 * e) for s, e in depth_slices(half, depth)]

    @staticmethod
    def _interleaved(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.stack((x[..., :half], x[..., half:]), dim=-1).flatten(-2)

    @staticmethod
    def _halves(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)

    def _rotary(self, bound: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = bound.get("position_embeddings")
        if rotary is None:
            raise ValueError("ModernBERT attention called without position_embeddings (the layer's rotary cos/sin)")
        return rotary

    def project(self, base: nn.Module, bound: dict):
        x = bound["hidden_states"]
        qkv = base.Wqkv(x).view(*x.shape[:2], 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))
        cos, sin = self._rotary(bound)
        q, k = self.functions.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        return self._interleaved(q), self._interleaved(k), v

    def encode_positions(self, bound: dict, delta: torch.Tensor) -> torch.Tensor:
        """The per-depth deltas ``[B, D, H, L, Dh]`` get the rotation the queries and keys got (rotary is linear, so
        rotating ``W x + delta`` is rotating each), in the interleaved layout: the depths as extra heads."""
        batch, depth, heads, length, width = delta.shape
        x = delta.reshape(batch, depth * heads, length, width)
        cos, sin = (t.unsqueeze(1) for t in self._rotary(bound))
        rotated = x.float() * cos + self.functions.rotate_half(x.float()) * sin
        return self._interleaved(rotated.to(x.dtype)).view(delta.shape)

    # -- mask -----------------------------------------------------------------------------------------------------
    def allowed_mask(self, bound: dict, batch: int, length: int):
        mask = bound.get("attention_mask")
        if mask is not None and not torch.is_tensor(mask):
            raise ValueError(f"MAW cannot read a {type(mask).__name__} attention mask (flex attention) on "
                             "ModernBERT: load the model with attn_implementation 'sdpa', 'eager' or "
                             "'flash_attention_2'")
        allowed = super().allowed_mask(bound, batch, length)
        if self.radius is None:
            return allowed
        # Also when transformers passes a 2D mask (flash) or none (no padding, or a window wider than the input).
        device = bound["hidden_states"].device
        pos = torch.arange(length, device=device)
        band = ((pos[:, None] - pos[None, :]).abs() <= self.radius)[None, None]
        if allowed is None:
            return band.expand(batch, 1, length, length)
        return allowed & band

    # -- O_orig and the output ------------------------------------------------------------------------------------
    def attention_dropout(self, base: nn.Module) -> float:
        return float(base.attention_dropout)

    def original_rows(self, base, bound, qkv, rows):
        return None  # never asked: its head may pool every token (prefix.FIRST_TOKEN_HEADS)

    def call_original(self, base: nn.Module, args: tuple, kwargs: dict, bound: dict, qkv: tuple):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        q, k, v = qkv
        q, k = self._halves(q), self._halves(k)
        mask = bound.get("attention_mask")
        extra = {key: value for key, value in bound.items()
                 if key not in ("self", "hidden_states", "position_embeddings", "attention_mask")}
        implementation = base.config._attn_implementation
        if implementation in DENSE_MASK_IMPLEMENTATIONS:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, self.functions.eager_attention_forward)
        else:
            packed = sorted(key for key in PACKED_KEYS if extra.get(key) is not None)
            if packed:
                raise ValueError(f"MAW cannot run on packed ModernBERT batches ({', '.join(packed)}): its depth "
                                 "weights are per example; pass a padded batch with an attention mask")
            _log_fallback_once(implementation)
            interface = ALL_ATTENTION_FUNCTIONS["sdpa"]
            mask = fix_empty_rows(self.allowed_mask(bound, v.shape[0], v.shape[2]))
        out, weights = interface(base, q, k, v, mask, dropout=base.attention_dropout if base.training else 0.0,
                                 scaling=self.head_dim ** -0.5, sliding_window=base.sliding_window,
                                 deterministic=base.deterministic_flash_attn, **extra)
        return out.reshape(*out.shape[:2], -1).contiguous(), weights

    def finish(self, base: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """``Wo`` and its dropout belong to ModernBERT's attention module: applied once, to the blend."""
        return base.out_drop(base.Wo(out))


def _log_fallback_once(implementation: str) -> None:
    if implementation in _fallback_logged:
        return
    _fallback_logged.add(implementation)
    logger.warning("ModernBERT with attn_implementation=%r: MAW layers run on the padded batch (sdpa with a dense "
                   "padding and window mask); unpatched layers keep %r", implementation, implementation)
