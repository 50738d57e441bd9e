"""The model class of a portable checkpoint: the architecture's own ``*ForSequenceClassification`` class, which after
loading its weights patches itself with MAW from the folder's ``maw_config.json`` and ``maw_model.safetensors``.

This module's source, together with the MAW modules it uses, is what :mod:`maw_reranker.cross_encoder.portable`
writes into a saved folder as ``modeling_maw.py`` (the package imports below are stripped there: the names they
bring are defined earlier in the same file). So ``AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)`` and ``sentence_transformers.CrossEncoder(folder, trust_remote_code=True)`` load a MAW model
where this package is not installed. Inside the package, :func:`portable_model_class` gives the same class.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from maw_reranker.cross_encoder.model import MAW_WEIGHTS_NAME
from maw_reranker.maw.config import CONFIG_NAME, MAWConfig
from maw_reranker.maw.patcher import load_maw_state_dict, maw_state_dict, patch_model, repatch, unpatch_model

portable_logger = logging.getLogger(__name__)

# Hub keywords of from_pretrained that also locate the MAW files beside the weights.
_HUB_KEYWORDS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def _maw_file(name_or_path, filename: str, kwargs: dict) -> Optional[str]:
    """``filename`` of a local folder or a hub repository (downloaded to the cache), or None when absent."""
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, subfolder, filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    hub = {key: kwargs[key] for key in _HUB_KEYWORDS if kwargs.get(key) is not None}
    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub)


class PortableMAWMixin:
    """Loads the wrapped architecture's weights as usual, then applies MAW as saved; saves the same layout back."""

    maw_portable = True  # marks the class for CrossEncoderWithMAW.from_sentence_transformers

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        settings = _maw_file(pretrained_model_name_or_path, CONFIG_NAME, kwargs)
        if settings is None:
            portable_logger.warning("%s has no %s: loaded without MAW", pretrained_model_name_or_path, CONFIG_NAME)
            return model
        config = MAWConfig.load(os.path.dirname(settings))
        if not config.use_maw:
            return model
        patch_model(model, config)
        expected = maw_state_dict(model)
        weights = _maw_file(pretrained_model_name_or_path, MAW_WEIGHTS_NAME, kwargs)
        if weights is not None:
            from safetensors.torch import load_file

            load_maw_state_dict(model, load_file(weights))
        elif expected:
            raise ValueError(f"{pretrained_model_name_or_path} has {CONFIG_NAME} with {len(expected)} MAW tensors "
                             f"to load but no {MAW_WEIGHTS_NAME}")
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The layout ``CrossEncoderWithMAW.save_pretrained`` writes: the unpatched weights under their original
        names, plus ``maw_config.json`` and ``maw_model.safetensors``."""
        config = getattr(self, "maw_config", None)
        if config is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        state = {key: value.contiguous().cpu() for key, value in maw_state_dict(self).items()}
        removed = unpatch_model(self)
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            repatch(self, removed)
        config.save(save_directory)
        if state:
            from safetensors.torch import save_file

            save_file(state, os.path.join(str(save_directory), MAW_WEIGHTS_NAME))
        return result


def portable_model_class(model_type: str) -> type:
    """``MAWForSequenceClassification`` for a base ``model_type`` (``bert``, ``modernbert``, ...): a subclass of
    that architecture's ``*ForSequenceClassification`` class that keeps its native config class (``config.json`` is
    the architecture's own, so transformers, loading it as remote code, registers nothing over its native classes)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    base = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[CONFIG_MAPPING[model_type]]
    return type("MAWForSequenceClassification", (PortableMAWMixin, base),
                {"__module__": __name__, "__doc__": f"{base.__name__} with MAW attention (a portable checkpoint)."})
