"""LoRA through peft on the backbone (the original study's ``maw_lora_finetune``), merged before saving.

Adapters are injected in place into ``encoder.model`` (no PeftModel wrapper), so the MAW layers, the head and the
cross-encoder forward stay as they are. Saving merges the adapters into the base weights of a copy, so the saved
directory is a plain Hugging Face model that ``CrossEncoderWithMAW.from_pretrained`` loads without peft.
"""

from __future__ import annotations

import copy
from typing import Optional

from torch import nn


def add_lora(encoder, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             target_modules: Optional[list[str]] = None) -> None:
    """Inject LoRA adapters into the backbone's linear layers (``target_modules``: peft's default for the
    architecture when None). MAW's projections go through the same ``query``/``key``/``value`` modules, so the
    adapted weights feed both the original and the MAW attention."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if target_modules is None:
        model_type = getattr(encoder.model.config, "model_type", None)
        target_modules = DEFAULTS.get(model_type)
        if target_modules is None:
            raise ValueError(f"no default LoRA target modules for model type {model_type!r}; set lora_target_modules")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    inject_adapter_in_model(config, encoder.model)


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
