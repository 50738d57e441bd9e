"""Shared test fixtures: a tiny cross-encoder for the fixture collection, the offline ../shared/data folder, and
skipping tests whose extras are absent."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
# Tests never reach the network; configs of local data copies (benchmarks/configs) resolve by name, with their data
# root at ../shared/data when it is there. Set before transformers / huggingface_hub read their constants.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MAW_CONFIG_PATH", str(REPO / "benchmarks" / "configs"))
if SHARED_DATA.is_dir():
    os.environ.setdefault("MAW_DATA", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; tests using it skip when it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A tiny random-weight cross-encoder whose vocabulary covers the fixture collection (tests/data/fixtures.py)."""
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
    from tests.data.fixtures import DOCS, QUERIES

    texts = [f"{title} {text}" for title, text in DOCS.values()] + list(QUERIES.values())
    words = sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})
    return str(save_tiny_cross_encoder(tmp_path_factory.mktemp("tiny"), words, initializer_range=0.3))


def pytest_collection_modifyitems(config, items):
    # `pyserini`-marked tests need Pyserini + a Java 21+ runtime (pip install 'maw-reranker[pyserini]').
    if not any("pyserini" in item.keywords for item in items):
        return
    from maw_reranker.retrieve.pyserini_env import pyserini_available

    ok, why = pyserini_available()
    if not ok:
        skip = pytest.mark.skip(reason=why)
        for item in items:
            if "pyserini" in item.keywords:
                item.add_marker(skip)
