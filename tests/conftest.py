"""Shared test fixtures: the offline ../shared/data folder and skipping tests whose extras are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; tests using it skip when it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


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
