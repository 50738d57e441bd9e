"""Split a cross-encoder at layer ``start``: a frozen prefix (run once, cacheable) and a trainable top.

MAW lives in the last ``k`` layers. With everything below them frozen, the hidden states entering layer
``start = num_layers - k`` are a fixed function of the (query, document) pair, so they can be computed once
(:func:`prefix_states`, cached on disk by :class:`maw_reranker.cross_encoder.prefix_cache.PrefixCache`) and training,
dev evaluation and reranking run only the top (:func:`top_forward`)::

    start = split_layer(encoder, k=1)                 # 11 on a 12-layer MiniLM
    trainable = freeze_prefix(encoder, start)         # prefix: requires_grad=False; returns what still trains
    train_top(encoder, start)                         # top layers + head in train mode, prefix in eval mode
    states = prefix_states(encoder, encoder.tokenize(pairs), start)   # no_grad, eval mode, stops at layer `start`
    logits = top_forward(encoder, states, start)      # [B] float32, with autograd, top layers + head only

Exactness: ``top_forward(e, prefix_states(e, f, s), s)`` equals ``e(**f)`` (eval mode) for every ``s``, and in
train mode equals the full forward with the prefix modules in eval mode (:func:`train_top`) under the same torch
seed: the prefix draws no random numbers in eval mode, so the top draws the same dropout masks (and the same router
Gumbel noise / GRPO samples) in the same order.

What "the prefix" is (one definition, used to freeze, to put in eval mode and to fingerprint the cache): every module
of the backbone (``model.base_model``) except the top layers (``encoder.layer[start:]``) and the backbone's pooler.
So besides the embeddings and layers ``< start`` it holds ELECTRA's ``embeddings_project``, DeBERTa-v2's ``conv``
(applied after layer 0 only) and its relative-position embeddings and their LayerNorm: the latter are read by every
layer, prefix ones included, so training them would silently invalidate the cached states; they stay frozen. The
top is the top layers (with their MAW parameters), the pooler and the classification head.

How the top runs without the prefix (:func:`top_forward`), generic across transformers versions: for the duration of
one call the embeddings module is swapped for a stub that returns the given hidden states, the encoder's layer list
for the top layers only, ELECTRA's ``embeddings_project`` for an identity (the cache is taken after it) and, when
``start > 0``, DeBERTa-v2's ``conv`` for None (it belongs to layer 0, in the prefix); then the model's normal forward
runs with ``inputs_embeds=hidden_states`` and the real attention mask, so it builds its own mask (sdpa/eager) and
DeBERTa its own relative positions (they depend only on the sequence length). Everything is restored in a
``finally``. Nothing else depends on a layer's position: MAW layers keep their ``layer_index``.

ModernBERT keeps its layers in ``model.layers`` (no ``encoder``) and normalizes after the last layer
(``final_norm``, which belongs to the top as the pooler does); its top runs the same way: the model builds each
layer's mask (global, or the sliding window) and rotary embeddings (global or local base) from the attention mask and
the sequence length, and each layer picks its own by its type, wherever it sits in the shortened list.

Supported: the architectures :mod:`maw_reranker.utils.tiny_models` builds (BERT/MiniLM, RoBERTa, XLM-RoBERTa,
ELECTRA, DeBERTa-v2, ModernBERT); ``0 <= start < num_layers`` (at least one trainable layer).
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from maw_reranker.cross_encoder.fingerprint import config_entries, fingerprint
from maw_reranker.maw.adapters import SUPPORTED_ARCHITECTURES, adapter_for
from maw_reranker.maw.layer import DepthwiseMAWSelfAttention

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2", "modernbert")
# Backbone modules outside the layers that act after the last layer: they belong to the top, not the prefix.
_TOP_MODULES = ("pooler", "final_norm")
FINGERPRINT_VERSION = 1


class _PrefixDone(BaseException):
    """Raised by the pre-hook on layer ``start`` to stop the forward pass once its input is captured. A
    BaseException, so that no ``except Exception`` in library code between here and the caller swallows it."""


# -- the split ------------------------------------------------------------------------------------------------
def hf_model(encoder: Any) -> nn.Module:
    """The Hugging Face sequence-classification model of a :class:`CrossEncoderWithMAW` (or the model itself)."""
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

    return encoder.model if isinstance(encoder, CrossEncoderWithMAW) else encoder


def _backbone(encoder: Any) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
    """(backbone, the module holding the layer list, the layer list), or a ValueError for an unsupported model.
    The holder is ``backbone.encoder`` (``.layer``), or for ModernBERT the backbone itself (``.layers``)."""
    model = hf_model(encoder)
    base = getattr(model, "base_model", None)
    enc = getattr(base, "encoder", None)
    layers = getattr(enc, "layer", None)
    if enc is None and isinstance(getattr(base, "layers", None), nn.ModuleList):  # ModernBERT
        enc, layers = base, base.layers
    if not isinstance(layers, nn.ModuleList) or not hasattr(base, "embeddings"):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(f"cannot split model type {kind!r} into a prefix and a top: supported are "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} (a backbone with .embeddings and .encoder.layer or "
                         ".layers)")
    return base, enc, layers


def _layers_name(enc: nn.Module, layers: nn.ModuleList) -> str:
    return "layers" if getattr(enc, "layers", None) is layers else "layer"


def num_layers(encoder: Any) -> int:
    """Number of transformer layers of the backbone."""
    return len(_backbone(encoder)[2])


def split_layer(encoder: Any, k: int) -> int:
    """``start = num_layers - k``: the index of the first trainable layer when the last ``k`` layers train."""
    n = num_layers(encoder)
    if not 1 <= int(k) <= n:
        raise ValueError(f"k (trainable top layers) must be in [1, {n}] for this model, got {k}")
    return n - int(k)


def _check_start(encoder: Any, start: int) -> int:
    n = num_layers(encoder)
    try:
        index = operator.index(start) if not isinstance(start, bool) else None
    except TypeError:
        index = None
    if index is None or not 0 <= index < n:
        raise ValueError(f"start (first top layer) must be an int in [0, {n - 1}] for this model, got {start!r}")
    return index


def prefix_maw_layers(encoder: Any, start: int) -> list[int]:
    """Indices of MAW layers that sit in the prefix (frozen, never trained by top-k training): a top-k run that
    means to train MAW wants this empty (``k >= inject_last_k``)."""
    from maw_reranker.maw.patcher import maw_layers

    _check_start(encoder, start)
    return sorted(m.layer_index for m in maw_layers(hf_model(encoder)).values() if m.layer_index < start)


def top_start(encoder: Any, top_layers: int) -> int:
    """The first of the last ``top_layers`` layers (option ``top_layers``), which must hold every MAW layer."""
    n = num_layers(encoder)
    if not 1 <= top_layers <= n:
        raise ValueError(f"option 'top_layers' must be in 1..{n} (the model's layers), got {top_layers}")
    start = n - top_layers
    below = prefix_maw_layers(encoder, start)
    if below:
        raise ValueError(f"option 'top_layers' ({top_layers}) must cover the MAW layers: layer(s) {below} lie below "
                         f"the top {top_layers}; raise top_layers to at least {n - below[0]}")
    return start


def top_layer_indices(encoder: Any, top_layers: int) -> list[int]:
    """Indices of the last ``top_layers`` layers (e.g. for LoRA on the same layers)."""
    return list(range(top_start(encoder, top_layers), num_layers(encoder)))


def prefix_modules(encoder: Any, start: int) -> list[nn.Module]:
    """The frozen prefix as a list of leaf-most whole modules: every direct child of the backbone and of its encoder
    except the top layers (``encoder.layer[start:]``), the layer list itself (its first ``start`` layers are listed
    instead) and the backbone's pooler (ModernBERT: its ``final_norm``). See the module docstring for what that
    covers per architecture."""
    start = _check_start(encoder, start)
    base, enc, layers = _backbone(encoder)
    out: list[nn.Module] = []
    for name, child in base.named_children():
        if child is enc or child is layers or name in _TOP_MODULES or child is None:
            continue
        out.append(child)
    for child in (enc.children() if enc is not base else ()):
        if child is not layers and child is not None:
            out.append(child)
    out.extend(layers[:start])
    return out


def _prefix_named_tensors(encoder: Any, start: int) -> Iterator[tuple[str, torch.Tensor]]:
    base, _, _ = _backbone(encoder)
    names = {id(m): n for n, m in base.named_modules()}
    for module in prefix_modules(encoder, start):
        prefix = names.get(id(module), "?")
        for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            yield f"{prefix}.{pname}", tensor


def freeze_prefix(encoder: Any, start: int) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on every prefix parameter; return the parameters that still require grad (the top
    layers, MAW included, the pooler and the head, unless the caller froze some of them)."""
    frozen = set()
    for module in prefix_modules(encoder, start):
        for p in module.parameters():
            p.requires_grad_(False)
            frozen.add(id(p))
    return [p for p in hf_model(encoder).parameters() if p.requires_grad and id(p) not in frozen]


def top_parameters(encoder: Any, start: int) -> list[tuple[str, nn.Parameter]]:
    """Named parameters outside the prefix (whatever their ``requires_grad``): what top-k training may train."""
    frozen = {id(p) for m in prefix_modules(encoder, start) for p in m.parameters()}
    return [(n, p) for n, p in hf_model(encoder).named_parameters() if id(p) not in frozen]


def train_top(encoder: Any, start: int, mode: bool = True) -> None:
    """Top layers and head in train mode (``mode``), the prefix always in eval mode. The training mode of a top-k
    run, cached or not: with it, the full forward equals :func:`top_forward` on :func:`prefix_states` under the same
    seed."""
    (encoder if isinstance(encoder, nn.Module) else hf_model(encoder)).train(mode)
    for module in prefix_modules(encoder, start):
        module.eval()


@contextlib.contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# -- prefix ---------------------------------------------------------------------------------------------------
def prefix_states(encoder: Any, features: Mapping[str, torch.Tensor], start: int) -> dict[str, torch.Tensor]:
    """Run the prefix (embeddings and layers ``< start``) in eval mode without autograd and return the input of layer
    ``start``: ``{"hidden_states": [B, L, H] (model dtype, detached), "attention_mask": [B, L] (as given, or ones)}``.

    ``features`` is a tokenizer output (``encoder.tokenize(pairs)``); it is moved to the model's device. The forward
    pass stops at layer ``start`` (a pre-hook captures its input and raises), so layers ``>= start`` and the head
    cost nothing. Module training flags are restored afterwards. Runs under ``no_grad``, not ``inference_mode``, so
    the states can enter an autograd graph later (the top's backward needs them saved).
    """
    start = _check_start(encoder, start)
    model = hf_model(encoder)
    _, _, layers = _backbone(encoder)
    device = next(model.parameters()).device
    features = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in features.items()}
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        captured["hidden_states"] = args[0] if args else kwargs["hidden_states"]
        raise _PrefixDone

    handle = layers[start].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with _modes_kept(model), torch.no_grad():
            model.eval()
            try:
                model(**features)
            except _PrefixDone:
                pass
    finally:
        handle.remove()
    if "hidden_states" not in captured:
        raise RuntimeError(f"the forward pass never reached layer {start}: cannot capture its input")
    hidden = captured["hidden_states"].detach()
    mask = features.get("attention_mask")
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    return {"hidden_states": hidden, "attention_mask": mask}


# -- top ------------------------------------------------------------------------------------------------------
class _GivenStates(nn.Module):
    """Stands in for the embeddings module: returns the hidden states it is handed as ``inputs_embeds``."""

    def forward(self, input_ids=None, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            raise RuntimeError("top_forward: the stub embeddings expected inputs_embeds")
        return inputs_embeds


@contextlib.contextmanager
def top_only(encoder: Any, start: int) -> Iterator[nn.Module]:
    """Within the block, the HF model (yielded) runs only layers ``>= start`` and the head, taking the input of layer
    ``start`` as ``inputs_embeds``. Restored on exit, also on error."""
    start = _check_start(encoder, start)
    model = hf_model(encoder)
    base, enc, layers = _backbone(encoder)
    swaps: list[tuple[nn.Module, str, Any]] = []

    def swap(owner: nn.Module, name: str, value: Any) -> None:
        swaps.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    try:
        swap(base, "embeddings", _GivenStates())
        swap(enc, _layers_name(enc, layers), nn.ModuleList(list(layers)[start:]))
        if getattr(base, "embeddings_project", None) is not None:  # ELECTRA: the cache is taken after it
            swap(base, "embeddings_project", nn.Identity())
        if start > 0 and getattr(enc, "conv", None) is not None:  # DeBERTa-v2: conv belongs to layer 0
            swap(enc, "conv", None)
        yield model
    finally:
        for owner, name, value in reversed(swaps):
            setattr(owner, name, value)


#: Model types whose sequence-classification head reads the last layer's first token and nothing else (BERT's pooler,
#: the RoBERTa / ELECTRA classification heads, DeBERTa-v2's context pooler), and whose layers are ``attention``,
#: then a feed-forward part on its output (ModernBERT's head may pool every token).
FIRST_TOKEN_HEADS = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2")


@contextlib.contextmanager
def first_token_logits(model: nn.Module) -> Iterator[bool]:
    """Within the block, the last layer of the sequence-classification model in ``model`` (a
    :class:`CrossEncoderWithMAW`, a :class:`~maw_reranker.cross_encoder.top.TopModel`, the HF model, a PEFT model
    around it) computes only what the head reads, the first token (:data:`FIRST_TOKEN_HEADS`):
    its attention block's output projection and residual, and its feed-forward part, run for that token alone; its
    self-attention computes the first query row alone against every key where it can (a MAW layer: ``O_orig`` and
    the depths, whose statistics still read every row; a plain BERT-style one through the model's own attention
    function). The logits are those of a full pass; hidden states asked for inside the block end in ``[B, 1, H]``.
    The logits-only forwards use it (``CrossEncoderWithMAW.forward``, :func:`top_forward`).

    Yields whether it applies; it does not (nothing changes) for other heads, a feed-forward chunked by
    ``chunk_size_feed_forward`` (it needs the full length), or gradient checkpointing (its recomputation in
    backward runs outside the block). One forward at a time per model, as with any hooks; a model copied inside
    the block keeps them."""
    from transformers import PreTrainedModel  # not a PEFT wrapper of one, whose class name ends alike

    classifier = next((m for m in model.modules() if isinstance(m, PreTrainedModel)
                       and type(m).__name__.endswith("ForSequenceClassification")), None)
    last = None
    if classifier is not None and getattr(classifier.config, "model_type", None) in FIRST_TOKEN_HEADS:
        try:
            _, enc, layers = _backbone(classifier)
        except ValueError:
            layers = None
        # DeBERTa-v2's conv mixes layer 0's output with its input: not with a one-layer model
        if layers and (len(layers) > 1 or getattr(enc, "conv", None) is None) and \
                getattr(layers[-1], "chunk_size_feed_forward", 0) <= 1 and \
                not any(getattr(m, "gradient_checkpointing", False) for m in (classifier, enc, *layers)):
            last = getattr(layers[-1], "attention", None)
    if not isinstance(last, nn.Module):
        yield False
        return
    handles = [last.register_forward_hook(_first_token)]
    held = []
    output = getattr(last, "output", None)
    if isinstance(output, nn.Module):  # `output(attention, residual)`: both cut, so the attention may return one row
        handles.append(output.register_forward_pre_hook(_first_token_inputs))
        held = [m for m in last.modules() if isinstance(m, DepthwiseMAWSelfAttention)]
        attention = getattr(last, "self", None)
        if not held and type(attention).__name__ in SUPPORTED_ARCHITECTURES.values():
            held = [attention]
        for m in held:
            _hold_first_row(m)
    try:
        yield True
    finally:
        for m in held:
            _release_first_row(m)
        for handle in handles:
            handle.remove()


def _hold_first_row(module: nn.Module) -> None:
    """The self-attention ``module`` computes the first query row alone until as many releases as holds (blocks
    that overlap without nesting end in any order): a MAW layer by ``query_rows``, a plain one by an instance
    ``forward`` (not where one is set already: accelerate's hooks)."""
    holds = module.__dict__.get("_first_row_holds", 0)
    module.__dict__["_first_row_holds"] = holds + 1
    if holds:
        return
    if isinstance(module, DepthwiseMAWSelfAttention):
        module.query_rows = 1
    elif "forward" not in vars(module):
        module.forward = _first_row_forward(module)
        module.__dict__["_first_row_forward"] = module.forward


def _release_first_row(module: nn.Module) -> None:
    holds = module.__dict__.get("_first_row_holds", 1) - 1
    if holds > 0:
        module.__dict__["_first_row_holds"] = holds
        return
    module.__dict__.pop("_first_row_holds", None)
    installed = module.__dict__.pop("_first_row_forward", None)
    if isinstance(module, DepthwiseMAWSelfAttention):
        module.query_rows = None
    elif installed is not None and vars(module).get("forward") is installed:
        del module.forward


def _first_row_forward(module: nn.Module):
    """``module.forward`` (a plain self-attention) computing its output for the first query row alone, through the
    model's own attention function, where MAW's adapter can ask it for fewer queries than keys; else the original."""
    adapter, original = adapter_for(module), module.forward

    def forward(*args, **kwargs):
        bound = adapter.bind(args, kwargs)
        if not adapter.wants_attentions(module, bound):
            out = adapter.original_rows(module, bound, None, 1)
            if out is not None:
                return out, None
        return original(*args, **kwargs)

    return forward


def _first_token(module: nn.Module, args: tuple, output):
    """The attention block's output at the first position only (``[B, 1, H]``), its other outputs as they are."""
    if torch.is_tensor(output):
        return output[:, :1]
    return (output[0][:, :1], *output[1:])


def _first_token_inputs(module: nn.Module, args: tuple):
    """The attention output module's ``(attention, residual)`` at the first position only."""
    if len(args) < 2 or not all(torch.is_tensor(a) for a in args[:2]):
        return None
    return (args[0][:, :1], args[1][:, :1], *args[2:])


def top_forward(encoder: Any, states: Mapping[str, torch.Tensor], start: int) -> torch.Tensor:
    """Relevance logits ``[B]`` (float32) from the input of layer ``start`` (:func:`prefix_states` or a
    :class:`PrefixCache` batch), through layers ``>= start``, the pooler and the head only, with autograd and in the
    modules' current train/eval mode (dropout of the top layers and head applies in train mode).

    ``states["hidden_states"]`` may be of any float dtype and device (fp16 from a cache): it is cast to the model's
    parameter dtype and device. ``states["attention_mask"]`` is the ``[B, L]`` padding mask (1 = token)."""
    model = hf_model(encoder)
    param = next(model.parameters())
    hidden = states["hidden_states"].to(device=param.device, dtype=param.dtype)
    mask = states.get("attention_mask")
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=param.device)
    mask = mask.to(param.device)
    if hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"top_forward: hidden_states {tuple(hidden.shape)} and attention_mask {tuple(mask.shape)} "
                         "must be [B, L, H] and [B, L]")
    with top_only(encoder, start) as top, first_token_logits(top):
        out = top(inputs_embeds=hidden, attention_mask=mask)
    return out.logits[:, 0].float()


def split_forward(encoder: Any, features: Mapping[str, torch.Tensor], start: int) -> torch.Tensor:
    """The uncached top-k forward: :func:`prefix_states` then :func:`top_forward` (logits ``[B]`` float32)."""
    return top_forward(encoder, prefix_states(encoder, features, start), start)


# -- identity of a prefix (the cache key) ---------------------------------------------------------------------
def prefix_fingerprint(encoder: Any, start: int, tokenizer: Any = None) -> str:
    """A sha256 hex digest of everything the prefix states of a pair depend on, apart from ``max_length`` and the
    storage dtype (which :class:`PrefixCache` adds): the model config (less names, head and attention-kernel
    entries), ``start``, the parameter dtype, every prefix parameter and buffer (names, shapes, dtypes, bytes), the
    tokenizer (its full serialization) and, when a MAW layer sits in the prefix, the MAW config.

    Hashing the weights (not the model path) means a fine-tuned copy, a re-download or an in-place edit can never
    reuse stale states; it costs one pass over the prefix weights (about 0.2 s for MiniLM-L12)."""
    start = _check_start(encoder, start)
    model = hf_model(encoder)
    if tokenizer is None:
        tokenizer = getattr(encoder, "tokenizer", None)
    param = next(model.parameters())
    head = {"version": FINGERPRINT_VERSION, "start": start, "param_dtype": str(param.dtype),
            "config": config_entries(model.config)}
    maw = getattr(model, "maw_config", None)
    if maw is not None and prefix_maw_layers(encoder, start):
        head["maw"] = maw.to_dict()
    return fingerprint(head, tokenizer, _prefix_named_tensors(encoder, start))


__all__ = ["SUPPORTED_MODEL_TYPES", "hf_model", "num_layers", "split_layer", "top_start",
           "top_layer_indices", "prefix_modules",
           "prefix_maw_layers", "freeze_prefix", "top_parameters", "train_top", "prefix_states", "top_only",
           "top_forward", "split_forward", "prefix_fingerprint"]
