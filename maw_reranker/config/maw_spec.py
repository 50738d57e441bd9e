"""The one parser of the ``maw`` option, with one meaning in every command and in the Python API.

* ``auto`` (the default): what the model directory saved; a plain checkpoint stays unpatched;
* ``null`` (also ``none``, ``off``, ``false``): the unpatched model, even when the directory saved MAW;
* a mapping of ``MAWConfig`` fields (or a ``MAWConfig``): inject MAW with these settings.

These are exactly the values ``CrossEncoderWithMAW.from_pretrained(maw=...)`` accepts.
"""

from __future__ import annotations

from typing import Any

from maw_reranker.config.files import parse_yaml
from maw_reranker.config.parser import _convert, _fields

AUTO = "auto"
_OFF = ("none", "null", "false", "off", "")


def parse_maw(value: Any):
    """The ``maw`` option -> ``MAWConfig``, ``None`` (unpatched) or ``"auto"``; bad keys/values name themselves."""
    from maw_reranker.maw.config import MAWConfig

    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        if text.lower() in _OFF:
            return None
        value = parse_yaml(text, "option 'maw'")
        if isinstance(value, str):
            return parse_maw(value) if value.strip().lower() in _OFF + (AUTO,) else _bad(value)
    if value is None or value is False:
        return None
    if isinstance(value, MAWConfig):
        return value
    if not isinstance(value, dict):
        _bad(value)
    fields = {f.name: f for f in _fields(MAWConfig)}
    # Each field is typed by the one option parser: 2.7 is no depth, "abc" no strength; errors name the field.
    value = {k: (_convert(f"maw.{k}", v, fields[k], "option 'maw'") if k in fields else v) for k, v in value.items()}
    try:
        config = MAWConfig.from_dict(dict(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"option 'maw': {exc}") from None
    return config if config.use_maw else None  # {use_maw: false} is the unpatched model, as null


def _bad(value):
    raise ValueError(f"option 'maw' must be auto, null or a mapping of MAWConfig fields; got {value!r}")


def with_run_seed(maw, seed: int, model_path: str | None = None):
    """A suite's seeds draw different random gates: the effective ``maw_random_seed`` is the variant's + seed. A model
    that saved MAW keeps its own settings: the run seed never rewrites them."""
    if maw is None or maw == AUTO or (model_path is not None and saved_maw(model_path) is not None):
        return maw
    return maw.replace(maw_random_seed=maw.maw_random_seed + int(seed))


def saved_maw(model_path: str):
    """The MAW settings saved with a model folder or hub repo (None for a plain checkpoint)."""
    from maw_reranker.cross_encoder.loading import saved_maw_config

    return saved_maw_config(model_path)


def effective_maw(maw, model_path: str):
    """The MAW settings a model will run with: ``auto`` resolved against the model (None when unpatched)."""
    return saved_maw(model_path) if maw == AUTO else maw


def maw_to_dict(maw):
    """JSON-ready form of a parsed ``maw`` value (for config.json and run comparison)."""
    return maw.to_dict() if hasattr(maw, "to_dict") else maw
