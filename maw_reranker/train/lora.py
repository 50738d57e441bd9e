"""LoRA through peft on the backbone (the original study's ``maw_lora_finetune``), merged before saving.

Adapters are injected in place into ``encoder.model`` (no PeftModel wrapper), so the MAW layers, the head and the
cross-encoder forward stay as they are. Saving merges the adapters into the base weights of a copy, so the saved
directory is a plain Hugging Face model that ``CrossEncoderWithMAW.from_pretrained`` loads without peft.
"""

from __future__ import annotations

import copy
from typing import Optional

from torch import nn


def default_targets(hf_model: nn.Module, target_modules: Optional[list[str]] = None) -> list[str]:
    """``target_modules``, or peft's default for the architecture."""
    if target_modules:
        return list(target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(hf_model.config, "model_type", None)
    targets = DEFAULTS.get(model_type) or _MORE_DEFAULTS.get(model_type)
    if targets is None:
        raise ValueError(f"no default LoRA target modules for model type {model_type!r}; set lora_target_modules")
    return list(targets)


# Architectures peft has no default for: the fused query/key/value projection, as peft's defaults target q and v.
_MORE_DEFAULTS = {"modernbert": ["Wqkv"]}


def add_lora(encoder, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             target_modules: Optional[list[str]] = None, layers: Optional[list[int]] = None) -> None:
    """Inject LoRA adapters into the backbone's linear layers (``target_modules``: peft's default for the
    architecture when None; ``layers``: only these encoder layers, e.g. the top ones). MAW's projections go through
    the same ``query``/``key``/``value`` modules, so the adapted weights feed both the original and the MAW
    attention."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=default_targets(encoder.model, target_modules),
                        layers_to_transform=list(layers) if layers is not None else None,
                        layers_pattern=["layer", "layers"] if layers is not None else None)  # ModernBERT: layers
    inject_adapter_in_model(config, encoder.model)


def rank_for_budget(hf_model: nn.Module, n_params: int, target_modules: Optional[list[str]] = None,
                    layers: Optional[list[int]] = None) -> int:
    """The LoRA rank whose adapter parameter count is closest to ``n_params`` (at least 1): a LoRA baseline with
    as many trainable parameters as the MAW variant it is compared with (each adapted ``Linear(in, out)`` adds
    ``r * (in + out)``)."""
    from maw_reranker.train.params import layer_of

    targets = default_targets(hf_model, target_modules)
    per_rank = 0
    for name, module in hf_model.named_modules():
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in targets:
            continue
        layer = layer_of(name + ".")
        if layer is None or (layers is not None and layer not in layers):
            continue
        per_rank += module.in_features + module.out_features
    if per_rank == 0:
        raise ValueError(f"no LoRA target module ({', '.join(targets)}) in the chosen layers")
    return max(1, round(n_params / per_rank))


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merge_lora_(model: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base layer and put the base layer back (in place)."""
    from peft.tuners.lora import LoraLayer

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in targets:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def merged_copy(encoder):
    """A copy of the cross-encoder with LoRA merged (the training model keeps its adapters)."""
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

    model = merge_lora_(copy.deepcopy(encoder.model))
    return CrossEncoderWithMAW(model, encoder.tokenizer, max_length=encoder.max_length)
