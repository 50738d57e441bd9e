"""Inject MAW into a Hugging Face model, PEFT-tuner style: find the target self-attention modules by name and
layer index, replace each with a :class:`DepthwiseMAWSelfAttention` that wraps (and reuses) the original, and
save/load only what was added."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn

from maw_reranker.maw.adapters import SUPPORTED_ARCHITECTURES, unsupported_error
from maw_reranker.maw.config import MAWConfig, resolve_layers
from maw_reranker.maw.layer import DepthwiseMAWSelfAttention, wrap_attention

# BERT family and DeBERTa: encoder.layer.<i>.attention.self; ModernBERT: layers.<i>.attn.
_LAYER_INDEX = re.compile(r"\.(\d+)\.(?:attention\.self|attn)$")


def find_attention_modules(model: nn.Module) -> "OrderedDict[int, tuple[str, nn.Module]]":
    """Encoder self-attention modules of a supported architecture, keyed by layer index."""
    found: "OrderedDict[int, tuple[str, nn.Module]]" = OrderedDict()
    supported = set(SUPPORTED_ARCHITECTURES.values())
    for name, module in model.named_modules():
        match = _LAYER_INDEX.search(name)
        if match is None or isinstance(module, DepthwiseMAWSelfAttention) or "base_layer" in name:
            continue
        if type(module).__name__ in supported:
            found[int(match.group(1))] = (name, module)
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise unsupported_error(f"model type {kind!r}")
    return found


def maw_layers(model: nn.Module) -> "OrderedDict[str, DepthwiseMAWSelfAttention]":
    """The MAW layers of a patched model, by module name (empty when unpatched)."""
    return OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, DepthwiseMAWSelfAttention))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def patch_model(model: nn.Module, config: MAWConfig | None = None) -> nn.Module:
    """Replace the self-attention of the configured layers with MAW (in place; returns ``model``).

    Layers are ``config.layers`` (explicit indices, negative allowed) or the last ``config.inject_last_k``.
    ``MAWConfig(use_maw=False)`` leaves the model unpatched. The model keeps its own copy of ``config`` as
    ``model.maw_config``; every MAW layer and gating module reads that one object.
    """
    config = config or MAWConfig()
    if maw_layers(model):
        raise ValueError("model is already patched with MAW; call unpatch_model() first")
    if not config.use_maw:
        return model
    # One copy per model: the caller's object (maybe reused for another model) is never changed by this one.
    config = config.replace()
    targets = find_attention_modules(model)
    num_layers = max(targets) + 1
    for index in resolve_layers(config, num_layers):
        if index not in targets:
            raise ValueError(f"layer {index} has no supported self-attention module")
        name, original = targets[index]
        wrapper = wrap_attention(original, config, layer_index=index)
        # Hooks installed on the original (e.g. transformers' attention recorder) move to the wrapper, which
        # is what now produces the layer's output.
        wrapper._forward_hooks.update(original._forward_hooks)
        original._forward_hooks.clear()
        wrapper.train(original.training)
        _set_module(model, name, wrapper)
    model.maw_config = config
    return model


def unpatch_model(model: nn.Module) -> "OrderedDict[str, DepthwiseMAWSelfAttention]":
    """Put the original modules back; returns the removed MAW layers (re-insert them with :func:`repatch`)."""
    removed = maw_layers(model)
    for name, layer in removed.items():
        layer.base_layer._forward_hooks.update(layer._forward_hooks)
        layer._forward_hooks.clear()
        _set_module(model, name, layer.base_layer)
    if hasattr(model, "maw_config"):
        del model.maw_config
    return removed


def repatch(model: nn.Module, layers: "OrderedDict[str, DepthwiseMAWSelfAttention]") -> None:
    """Re-insert layers removed by :func:`unpatch_model`; ``model.maw_config`` is again the config they share."""
    for name, layer in layers.items():
        layer._forward_hooks.update(layer.base_layer._forward_hooks)
        layer.base_layer._forward_hooks.clear()
        _set_module(model, name, layer)
    if layers:
        model.maw_config = next(iter(layers.values())).maw_config


def maw_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, layer in maw_layers(model).items():
        for pname, param in layer.named_parameters():
            if not pname.startswith("base_layer."):
                yield f"{name}.{pname}", param


def maw_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what MAW added (parameters and buffers), keyed by full module path."""
    out = {}
    for name, layer in maw_layers(model).items():
        for key, value in layer.state_dict().items():
            if not key.startswith("base_layer."):
                out[f"{name}.{key}"] = value.detach().clone()
    return out


def load_maw_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load MAW parameters saved by :func:`maw_state_dict`; every expected key must be present and vice versa."""
    expected = set(maw_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"MAW parameters do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    layers = maw_layers(model)
    for name, layer in layers.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        layer.load_state_dict(sub, strict=False)


def set_maw_strength(model: nn.Module, strength: float) -> None:
    """Set alpha for every MAW layer of ``model``: one change to the config they all read."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"maw_strength must be in [0, 1], got {strength}")
    config = getattr(model, "maw_config", None)
    if config is None:
        raise ValueError("set_maw_strength: the model is not patched with MAW")
    config.maw_strength = float(strength)
