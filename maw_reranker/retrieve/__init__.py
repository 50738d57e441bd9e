"""First-stage retrieval: BM25 candidate pools from two engines (Pyserini/Lucene and embedded bm25s)."""

from maw_reranker.retrieve.engines import ENGINES, Bm25sEngine, Engine, PyseriniEngine, get_engine, resolve_engine_name
from maw_reranker.retrieve.pools import build_pool, pool_path
from maw_reranker.retrieve.pyserini_env import EngineUnavailableError, pyserini_available

__all__ = [
    "ENGINES", "Bm25sEngine", "Engine", "EngineUnavailableError", "PyseriniEngine", "build_pool", "get_engine",
    "pool_path", "pyserini_available", "resolve_engine_name",
]
