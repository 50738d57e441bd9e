"""The layering of docs/architecture.md: no import runs up the layers (function-level imports included)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maw_reranker"
LAYER = {"utils": 0, "maw": 1, "data": 1, "cross_encoder": 2, "retrieve": 2, "evaluate": 3, "config": 4,
         "integrations": 4, "train": 5,
         "experiments": 6, "demo": 7, "cli": 8}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            yield parts[0], path


@pytest.mark.parametrize("package,path", list(_modules()), ids=lambda v: str(v).split("maw_reranker/")[-1])
def test_no_import_runs_up_the_layers(package, path):
    assert package in LAYER, f"{package}/ is not placed in docs/architecture.md"
    for name in _imports(path):
        if not name.startswith("maw_reranker."):
            continue
        target = name.split(".")[1]
        if target in LAYER and target != package:  # another package: strictly lower layers only
            assert LAYER[target] < LAYER[package], f"{path} imports {name} (layer {LAYER[target]} >= {LAYER[package]})"


def test_data_layer_never_imports_torch():
    for path in (PACKAGE / "data").rglob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] == "torch"}, path
