"""Dataclass-driven command options: YAML config files (composable) + command-line overrides.

Every command declares its options as one dataclass. This module turns it into an argparse parser whose
``--help`` lists every option with its default, loads ``--config`` YAML files (later files win, a file may
pull in others with ``defaults: [other.yaml, ...]`` relative to itself; a bare name is looked up among the
configs of the kinds the options class names in ``CONFIG_KINDS``), then applies command-line flags on top.
Unknown keys and bad values fail before any work starts, naming the key and what is allowed; a key that an
options class lists in ``RENAMED`` fails with the new name.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from maw_reranker.config.files import ConfigError, deep_merge, load_yaml_config, parse_yaml, require_config


def _base_type(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def _fields(options_cls: type) -> list[dataclasses.Field]:
    """Dataclass fields with their annotations resolved (modules may use ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        f.type = hints.get(f.name, f.type)
        out.append(f)
    return out


def _choices(field: dataclasses.Field) -> list | None:
    tp = _base_type(field.type)
    if get_origin(tp) is typing.Literal:
        return list(get_args(tp))
    return field.metadata.get("choices")


def _optional(tp: Any) -> bool:
    origin = get_origin(tp)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in get_args(tp)


def _scalar(tp: type, value: Any) -> Any:
    # A mapping or list is never a scalar (e.g. `model: {name: x}`), and YAML's yes/no is not a number.
    if isinstance(value, (dict, list, tuple)) or (tp is not str and isinstance(value, bool)):
        raise ValueError(value)
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return tp(value)


def _convert(name: str, value: Any, field: dataclasses.Field, source: str) -> Any:
    """Coerce ``value`` to the field's type; raise ConfigError naming the option and where it came from."""
    tp = _base_type(field.type)
    allowed = _choices(field)
    if value is None:
        if _optional(field.type) or tp is Any:
            return None
        raise ConfigError(f"{source}: option '{name}' must be set (it has no 'null' value)")
    origin = get_origin(tp)
    try:
        if origin is typing.Literal:
            literal_types = {type(a) for a in get_args(tp)}
            if isinstance(value, str) and int in literal_types and value.lstrip("-").isdigit():
                value = int(value)
        elif tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                value = low in {"true", "1", "yes"}
            elif not isinstance(value, bool) and value not in (0, 1):
                raise ValueError(value)
            value = bool(value)
        elif tp in (int, float, str):
            value = _scalar(tp, value)
            if tp is float and not math.isfinite(value):  # inf/nan pass float() but no option means them
                raise ConfigError(f"{source}: option '{name}' must be a finite number, got {value!r}")
        elif origin in (list, tuple) or tp in (list, tuple):
            if isinstance(value, str):  # YAML/JSON flow list, or comma-separated
                value = parse_yaml(value, f"{source}: option '{name}'") if value.strip().startswith("[") else \
                    [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            inner = get_args(tp)
            if inner and inner[0] in (int, float, str):
                try:
                    value = [_scalar(inner[0], v) for v in value]
                except (TypeError, ValueError):
                    raise ConfigError(f"{source}: option '{name}' expects a list of {inner[0].__name__}, got "
                                      f"{value!r}") from None
            value = list(value)
        elif origin is dict or tp is dict:
            if isinstance(value, str):
                value = parse_yaml(value, f"{source}: option '{name}'") or {}
            if not isinstance(value, dict):
                raise ValueError(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: option '{name}' expects {getattr(tp, '__name__', tp)}, got {value!r}") from exc
    if allowed is not None:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in allowed]
        if bad:
            raise ConfigError(f"{source}: option '{name}' got {bad[0]!r}; allowed values: {', '.join(map(str, allowed))}")
    return value


def _flags(name: str) -> list[str]:
    """``--batch-size`` and ``--batch_size``: argparse's dashes and the field's own name (HfArgumentParser's)."""
    dashed = "--" + name.replace("_", "-")
    return [dashed] if "_" not in name else [dashed, "--" + name]


def _metavar(field: dataclasses.Field) -> str:
    """What the option takes: its choices, else its type (one element's, for lists)."""
    tp = _base_type(field.type)
    if get_origin(tp) in (list, tuple) or tp in (list, tuple):
        inner = get_args(tp)
        tp = inner[0] if inner else str
    choices = _choices(field)
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(tp, "YAML")


def _is_list(field: dataclasses.Field) -> bool:
    tp = _base_type(field.type)
    return get_origin(tp) in (list, tuple) or tp in (list, tuple)


def renamed_options(options_cls: type) -> dict:
    """``RENAMED`` of the class and of every base it inherits options from (old name -> what to use instead)."""
    out: dict = {}
    for klass in reversed(options_cls.__mro__):
        out.update(vars(klass).get("RENAMED", {}))
    return out


def build_parser(options_cls: type, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` plus one flag per dataclass field to ``parser``, as HfArgumentParser does: a bare boolean
    flag means true and ``--no-<flag>`` false (``--flag true|false`` also works), a list takes several values
    (``--seeds 0 1 2``; ``0,1`` and ``[0,1]`` too), and the metavar says what the option takes."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    kinds = getattr(options_cls, "CONFIG_KINDS", ())
    names = f" or names of configs ({'/'.join(kinds)}: `maw-rerank configs`)" if kinds else ""
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help=f"config file(s){names}, merged in order; command-line flags override them")
    for field in _fields(options_cls):
        if field.metadata.get("cli") is False:
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = field.metadata.get("help", "").replace("%", "%%")
        help_text = f"{help_text} [default: {default!r}]" if help_text else f"[default: {default!r}]"
        kwargs: dict = {"dest": field.name, "default": argparse.SUPPRESS, "metavar": _metavar(field),
                        "help": help_text}
        if _base_type(field.type) is bool:
            parser.add_argument(*_flags(field.name), nargs="?", const="true", **kwargs)
            parser.add_argument(*_flags("no_" + field.name), dest=field.name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif _is_list(field):
            parser.add_argument(*_flags(field.name), nargs="+", action=_ListAction, **kwargs)
        else:
            parser.add_argument(*_flags(field.name), **kwargs)
    for old in renamed_options(options_cls):  # accepted by argparse so that the error can name the new one
        parser.add_argument(*_flags(old), dest=old, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


class _ListAction(argparse.Action):
    """Several values of a list flag stay a list; one value is parsed as written (``0,1``, ``[0,1]``, ``0``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def parse_options(options_cls: type, ns: argparse.Namespace | dict, config_files: list | None = None,
                  source: str = "command line"):
    """Build an ``options_cls`` instance from config files and parsed flags (or a mapping, named by ``source`` in
    errors); validate every key and value."""
    values = dict(vars(ns)) if isinstance(ns, argparse.Namespace) else dict(ns)
    files = list(config_files or []) + list(values.pop("config", []) or [])
    fields = {f.name: f for f in _fields(options_cls)}
    kinds = getattr(options_cls, "CONFIG_KINDS", ())
    merged: dict = {}
    sources: dict = {}
    for entry in files:
        path = require_config(entry, kinds, "option 'config'")
        data = load_yaml_config(path)
        for key in data:
            sources[key] = str(path)
            if key in fields:  # every file's values are checked, also those a later file or flag overrides
                _convert(key, data[key], fields[key], str(path))
        merged = deep_merge(merged, data)
    for key in values:
        sources[key] = source
    # A mapping given in Python is checked like a config file; argparse adds only known keys anyway.
    merged.update(values)
    renamed = renamed_options(options_cls)
    for old in sorted(set(merged) & set(renamed)):
        raise ConfigError(f"{sources.get(old, 'config')}: option '{old}' was renamed: {renamed[old]} "
                          "(see CHANGELOG.md)")
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigError(f"{sources.get(unknown[0], 'config')}: unknown option '{unknown[0]}'; "
                          f"allowed options: {', '.join(sorted(fields))}")
    kwargs = {k: _convert(k, v, fields[k], sources.get(k, "config")) for k, v in merged.items()}
    try:
        options = options_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    return options


def options_to_dict(options: Any) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()}
