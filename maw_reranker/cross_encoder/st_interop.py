"""sentence-transformers interop: a :class:`CrossEncoderWithMAW` built from a ``sentence_transformers.CrossEncoder``
object or folder (the other way, sentence-transformers loading our folders, goes through the portable checkpoint:
``cross_encoder/portable.py``)."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maw_reranker.cross_encoder.loading import reconcile_maw
from maw_reranker.cross_encoder.model import _AUTO, default_device
from maw_reranker.maw.config import MAWConfig
from maw_reranker.maw.patcher import (find_attention_modules, load_maw_state_dict, maw_layers, maw_state_dict,
                                      unpatch_model)


def from_sentence_transformers(cls, source: Any, maw: MAWConfig | None | str = _AUTO, max_length: int | None = None,
                               device: str | torch.device | None = None, fresh_maw: bool = False):
    """See :meth:`CrossEncoderWithMAW.from_sentence_transformers`."""
    if maw != _AUTO and maw is not None and not isinstance(maw, MAWConfig):
        raise TypeError(f"maw must be a MAWConfig, None or 'auto', got {type(maw).__name__}")
    if isinstance(maw, MAWConfig) and not maw.use_maw:
        maw = None  # MAWConfig(use_maw=False) is the unpatched baseline, as maw=None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists() or _plain_layout(path):
            # A hub id, or a folder whose only module is the transformers model at its root (what
            # sentence-transformers saves for a CrossEncoder): the folder itself is a Hugging Face checkpoint.
            if max_length is None:
                max_length = _st_max_length(path)
            return cls.from_pretrained(source, maw=maw, max_length=max_length, device=device, fresh_maw=fresh_maw)
        from sentence_transformers import CrossEncoder

        source = CrossEncoder(str(path), device="cpu")
    model, tokenizer, st_length = _parts(source)
    model = copy.deepcopy(model)  # the caller's CrossEncoder is left as it was
    carried = _take_maw(model)
    # As from_pretrained: the carried MAW is the truth (other settings apply to its parameters; another structure is
    # an error unless fresh_maw).
    num_layers = max(find_attention_modules(model), default=-1) + 1
    maw, load_saved = reconcile_maw(carried[0] if carried else None, maw, num_layers, fresh_maw, "the CrossEncoder")
    encoder = cls(model, tokenizer, maw=maw, max_length=max_length or st_length)
    if load_saved and maw is not None:
        load_maw_state_dict(model, carried[1])
    encoder.to(device or default_device())
    encoder.eval()
    return encoder


def _plain_layout(path: Path) -> bool:
    """A folder whose ``config.json`` is the model's and whose ``modules.json`` (if any) names only the transformer at
    the root."""
    if not (path / "config.json").is_file():
        return False
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return True
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    return len(modules) == 1 and modules[0].get("path", "") in ("", ".") and \
        modules[0].get("type", "").endswith("Transformer")


def _st_max_length(path: Path) -> int | None:
    settings = path / "sentence_bert_config.json"
    if settings.is_file():
        value = json.loads(settings.read_text(encoding="utf-8")).get("max_seq_length")
        return int(value) if value else None
    return None


def _parts(ce) -> tuple[nn.Module, Any, int | None]:
    """(transformers model, tokenizer, max length) of a CrossEncoder whose scores are its model's logits alone."""
    if isinstance(ce, nn.Sequential) and len(ce) != 1:
        names = ", ".join(type(module).__name__ for module in ce)
        raise ValueError(f"this CrossEncoder has modules after its transformer ({names}); CrossEncoderWithMAW holds a "
                         "sequence-classification model whose logits are the scores")
    model = getattr(ce, "model", None)
    tokenizer = getattr(ce, "tokenizer", None)
    if not isinstance(model, nn.Module) or tokenizer is None or not hasattr(model, "config"):
        raise TypeError(f"expected a sentence_transformers CrossEncoder (or a path), got {type(ce).__name__}")
    length = getattr(ce, "max_seq_length", None)  # sentence-transformers 6; earlier: a plain max_length attribute
    if length is None:
        length = vars(ce).get("max_length")
    return model, tokenizer, int(length) if length else None


def _take_maw(model: nn.Module) -> tuple[MAWConfig, dict] | None:
    """Take MAW out of ``model`` (a copy), returning its settings and parameters: MAW from a portable checkpoint
    (``trust_remote_code``: the classes of its ``modeling_maw.py``) or patched by this package. The model is left
    unpatched, as the architecture's own class."""
    if getattr(type(model), "maw_portable", False):
        module = sys.modules[type(model).__module__]
        config = getattr(model, "maw_config", None)
        carried = None
        if config is not None:
            carried = MAWConfig.from_dict(config.to_dict()), module.maw_state_dict(model)
            module.unpatch_model(model)
        native = next(c for c in type(model).__mro__ if c.__module__.startswith("transformers.models."))
        model.__class__ = native
        return carried
    if maw_layers(model):
        config, state = model.maw_config, maw_state_dict(model)
        unpatch_model(model)
        return config.replace(), state
    return None
