"""YAML config files: loading with ``defaults:`` composition, deep merge, ``${VAR}`` values, and lookup by name.

Configs ship inside the package (``maw_reranker/configs/<kind>/<name>.yaml``, the repository's top-level
``configs/``), so a name such as ``main`` or ``maw_default`` is found from any working directory after any kind of
install. Names are looked up, in order, in ``configs/<kind>/`` of the working directory, in each root of
``$MAW_CONFIG_PATH`` (folders holding ``<kind>/`` folders, separated by ``:``), then in the package; so a project
can shadow or add configs without touching the package. A string value may hold ``${VAR}`` (or
``${VAR:-default}``), replaced from the environment when the file is read: configs of local data copies take their
data root that way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from maw_reranker.utils.errors import OptionError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
KINDS = ("datasets", "models", "suites", "training", "studies")
CONFIG_PATH_ENV = "MAW_CONFIG_PATH"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(OptionError):
    """A bad config file, key or value; the message names it."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML says so; PyYAML keeps the
    last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                                                    key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def yaml_error(exc: yaml.YAMLError, where: str) -> str:
    """One line: ``where:line:column: problem`` (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    position = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return f"{where}{position}: invalid YAML: {problem}"


def parse_yaml(text: str, where: str):
    """Parse YAML text (a file's or an option's) strictly; errors are one line naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error(exc, where)) from None


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_config(path: str | Path, _seen: tuple = ()) -> dict:
    """Load one YAML config, resolving its ``defaults:`` list (files relative to it) first."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: circular 'defaults' include")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data = _expand(parse_yaml(text, str(path)) or {}, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of option: value")
    includes = data.pop("defaults", None) or []
    if not isinstance(includes, list) or not all(isinstance(i, str) and i.strip() for i in includes):
        raise ConfigError(f"{path}: 'defaults' must be a list of config file names, got {includes!r}")
    merged: dict = {}
    for include in includes:
        merged = deep_merge(merged, load_yaml_config(path.parent / str(include), _seen + (path.resolve(),)))
    return deep_merge(merged, data)


def _expand(value, path: Path):
    """``${VAR}`` / ``${VAR:-default}`` in every string value of a loaded file; an unset VAR without a default is an
    error naming the file and the variable."""
    if isinstance(value, dict):
        return {k: _expand(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: {match.group(0)} needs the environment variable {name} (for example: export "
                          f"{name}=/path/to/data)")

    return _VAR.sub(replace, value)


def config_roots() -> list[Path]:
    """Folders holding ``<kind>/`` config folders, in lookup order: the working directory's ``configs``, the roots
    of ``$MAW_CONFIG_PATH``, the package's."""
    extra = [Path(p).expanduser() for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p.strip()]
    return [Path.cwd() / "configs", *extra, CONFIGS_DIR]


def _candidates(entry: str, kind: str) -> list[Path]:
    names = [entry] if entry.endswith((".yaml", ".yml")) else [entry, f"{entry}.yaml"]
    return [root / kind / name for root in config_roots() for name in names]


def find_config(entry: str | Path, kinds: str | tuple[str, ...]) -> Path | None:
    """A config file: the path itself, else ``configs/<kind>/<entry>[.yaml]`` under the cwd, then in the package.

    A path written as ``configs/<kind>/<name>.yaml`` (as in older commands run from a source checkout) is also
    found in the package when the working directory has no such file.
    """
    path = Path(entry).expanduser()
    if path.is_file():
        return path
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    parts = Path(entry).parts
    if len(parts) == 3 and parts[0] == "configs" and parts[1] in KINDS:
        packaged = CONFIGS_DIR / parts[1] / parts[2]
        return packaged if packaged.is_file() else None
    for kind in kinds:
        for candidate in _candidates(str(entry), kind):
            if candidate.is_file():
                return candidate
    return None


def require_config(entry: str | Path, kinds: str | tuple[str, ...], where: str = "config") -> Path:
    path = find_config(entry, kinds)
    text = str(entry)
    if path is None and Path(text).expanduser().is_dir():
        raise ConfigError(f"{where}: {text} is a folder, not a YAML config file")
    if path is None and ("/" in text or "\\" in text or text.endswith((".yaml", ".yml"))):
        raise ConfigError(f"{where}: config file not found: {text}")
    if path is None:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        looked = ", ".join(f"{k}/{entry}.yaml" for k in kinds)
        raise ConfigError(f"{where}: {str(entry)!r} is neither a file nor a known config name (looked for {looked} "
                          f"in ./configs, ${CONFIG_PATH_ENV} and the package: `maw-rerank configs` lists them)")
    return path


def list_configs(kind: str) -> list[str]:
    """Names of the packaged configs of one kind (for help texts and tests)."""
    return sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))
