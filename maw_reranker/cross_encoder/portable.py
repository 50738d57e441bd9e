"""A portable checkpoint: ``modeling_maw.py`` written into a saved folder, so that plain transformers
(``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``) and sentence-transformers
(``CrossEncoder(folder, trust_remote_code=True)``) load the MAW model where this package is not installed.

The file is generated, never maintained by hand: it is the source of the package's own MAW modules
(:data:`EMBEDDED_MODULES`, read with :func:`inspect.getsource`) one after the other, with their imports of each
other removed (the names they bring are defined earlier in the same file) and the few names they import from the
rest of the package defined at the top (constants by value, :data:`SHIMS` for functions). Its last line makes the
class ``config.json``'s ``auto_map`` names, for the folder's base ``model_type``
(:func:`maw_reranker.cross_encoder.portable_model.portable_model_class`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
from pathlib import Path

from maw_reranker import __version__
from maw_reranker.maw.adapters import SUPPORTED_ARCHITECTURES
from maw_reranker.utils.io import atomic_write, write_json

MODELING_NAME = "modeling_maw.py"
MODEL_CLASS = "MAWForSequenceClassification"
AUTO_MAP = {"AutoModelForSequenceClassification": f"{Path(MODELING_NAME).stem}.{MODEL_CLASS}"}
PACKAGE = "maw_reranker"

# In dependency order: a module comes after every module it imports from.
EMBEDDED_MODULES = (
    "maw_reranker.maw.config",
    "maw_reranker.maw.functional",
    "maw_reranker.maw.combined_attention",
    "maw_reranker.maw.gating",
    "maw_reranker.maw.adapters",
    "maw_reranker.maw.adapters_modernbert",
    "maw_reranker.maw.layer",
    "maw_reranker.maw.patcher",
    "maw_reranker.cross_encoder.portable_model",
)

# Functions the embedded modules import from the rest of the package, as the portable file defines them.
SHIMS = {
    # maw_reranker.utils.io.write_json writes atomically; MAWConfig.save in a portable model writes plainly.
    "write_json": '''def write_json(path, data, indent=2):
    import json as _json
    from pathlib import Path as _Path

    _Path(path).write_text(_json.dumps(data, indent=indent, sort_keys=False, default=str) + "\\n")
''',
}

_LITERALS = (str, int, float, bool, type(None))


def _package_imports(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == PACKAGE
    if isinstance(node, ast.Import):
        names = {alias.name.split(".")[0] for alias in node.names}
        if PACKAGE in names and len(names) > 1:
            raise ValueError(f"line {node.lineno}: split `import {PACKAGE}` from other imports")
        return PACKAGE in names
    return False


def _top_level_names(tree: ast.Module) -> dict[str, str]:
    """Names a module defines at top level -> the source of their definition (to compare across modules)."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = ast.dump(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out[name.id] = ast.dump(node)
    return out


def _strip(name: str, source: str, embedded: dict[str, dict[str, str]], outside: dict[str, str]) -> str:
    """``source`` with its package imports (at any depth) and ``from __future__`` imports replaced by ``pass`` (or
    by ``alias = name`` for an ``as`` import), checking that every imported name will be defined; names imported
    from outside :data:`EMBEDDED_MODULES` are collected into ``outside`` (name -> definition)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (is_future or _package_imports(node)):
            continue
        line = lines[node.lineno - 1]
        indent = line[: len(line) - len(line.lstrip())]
        rest = lines[node.end_lineno - 1][node.end_col_offset:].strip()
        if node.col_offset != len(indent) or not (rest == "" or rest.startswith("#")):
            raise ValueError(f"{name}:{node.lineno}: put the import on its own line(s)")
        replacement = []
        if not is_future:
            if isinstance(node, ast.Import):
                raise ValueError(f"{name}:{node.lineno}: use `from {PACKAGE}... import name` (a plain import of the "
                                 "package cannot be embedded)")
            for alias in node.names:
                if node.module in embedded:
                    if alias.name not in embedded[node.module]:
                        raise ValueError(f"{name}:{node.lineno}: {alias.name} is not defined at the top level of "
                                         f"{node.module}")
                else:
                    outside[alias.name] = _outside_definition(node.module, alias.name)
                if alias.asname and alias.asname != alias.name:
                    replacement.append(f"{indent}{alias.asname} = {alias.name}")
        what = "from __future__ import annotations: at the top of the file" if is_future else (
            f"from {node.module} import {', '.join(alias.name for alias in node.names)}: "
            + ("defined above in this file" if node.module in embedded else "defined at the top of this file"))
        replacement = replacement or [f"{indent}pass  # {what}"]
        span = node.end_lineno - node.lineno + 1
        lines[node.lineno - 1: node.end_lineno] = replacement + [""] * (span - len(replacement))
    return "\n".join(lines) + "\n"


def _outside_definition(module: str, name: str) -> str:
    if name in SHIMS:
        return SHIMS[name]
    value = getattr(importlib.import_module(module), name)
    if isinstance(value, _LITERALS):
        return f"{name} = {value!r}\n"
    raise ValueError(f"the portable file cannot embed {module}.{name}: add the module to EMBEDDED_MODULES or a shim "
                     "to SHIMS")


def modeling_source(model_type: str) -> str:
    """The text of ``modeling_maw.py`` for a folder whose base ``config.json`` has this ``model_type``."""
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"no portable MAW checkpoint for model type {model_type!r}: supported are "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    text = _embedded_text() + f"\n# {'=' * 110}\n{MODEL_CLASS} = portable_model_class({model_type!r})\n"
    tree = ast.parse(text)  # a syntax error here is the generator's
    left = [node.lineno for node in ast.walk(tree) if _package_imports(node)]
    if left:
        raise AssertionError(f"package imports left in the portable file at lines {left}")
    return text


@functools.lru_cache(maxsize=1)
def _embedded_text() -> str:
    """The embedded modules with their package imports stripped: the same for every model type, and made once per
    process (the code that runs in a process is the code it imported once)."""
    sources = {name: inspect.getsource(importlib.import_module(name)) for name in EMBEDDED_MODULES}
    defined = {name: _top_level_names(ast.parse(text)) for name, text in sources.items()}
    owner: dict[str, tuple[str, str]] = {}
    for module, names in defined.items():
        for name, definition in names.items():
            if name == "__all__":
                continue
            if name in owner and owner[name][1] != definition:
                raise ValueError(f"{module} and {owner[name][0]} both define {name!r} at top level: the portable file "
                                 "puts them in one namespace; rename one")
            owner.setdefault(name, (module, definition))
    outside: dict[str, str] = {}
    bodies = [_strip(name, text, defined, outside) for name, text in sources.items()]
    for name in outside:
        if name in owner:
            raise ValueError(f"{name!r} is imported from outside the embedded modules and defined by {owner[name][0]}")
    parts = [
        f'"""MAW (Multi-Attention-Weight) attention for a saved cross-encoder: transformers remote code.\n\n'
        f"Generated by maw-reranker {__version__} from the source of its modules\n"
        + "".join(f"    {name}\n" for name in EMBEDDED_MODULES)
        + "with their imports of each other removed. Do not edit: save the model again to regenerate it.\n\n"
        f"Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True) or\n"
        f"sentence_transformers.CrossEncoder(folder, trust_remote_code=True).\n"
        '"""\n',
        "from __future__ import annotations\n",
        "# -- names the embedded modules import from the rest of maw_reranker --\n",
        *(outside[name] + "\n" for name in sorted(outside)),
    ]
    for name, body in zip(EMBEDDED_MODULES, bodies):
        parts.append(f"\n# {'=' * 110}\n# {name}\n# {'=' * 110}\n")
        parts.append(body)
    return "".join(parts)


def write_portable_code(directory: str | Path) -> Path:
    """Write ``modeling_maw.py`` into a saved folder and name its class in ``config.json``'s ``auto_map``.

    The weights and the other files are left as they are; ``config.json`` keeps its base ``model_type``, so the folder
    loads as before without ``trust_remote_code`` (then without MAW)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    source = modeling_source(config.get("model_type"))
    with atomic_write(directory / MODELING_NAME) as handle:
        handle.write(source)
    auto_map = dict(config.get("auto_map") or {})
    auto_map.update(AUTO_MAP)
    config["auto_map"] = auto_map
    write_json(config_path, config)
    return directory / MODELING_NAME
