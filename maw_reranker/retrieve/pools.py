"""BM25 candidate pools: cached, atomically written TREC run files, one per (dataset, engine, k, k1, b).

Layout under ``pools_dir``::

    <dataset slug>/bm25-<engine>-k<k>[-k1_<k1>-b_<b>].run   the pool (TREC run)
    <dataset slug>/bm25-<engine>-k<k>...run.json             how it was made (engine, params, timings, source)
    _indexes/<corpus slug>/<index key>/                       engine indexes, shared by a corpus' splits

A pool and its metadata are one unit: the metadata is removed before a pool is (re)written and written after it,
recording the pool's size, so a ``.run`` whose metadata is missing, unreadable, or about other inputs, parameters
or another file is rebuilt, never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from maw_reranker.data.dataset import Dataset
from maw_reranker.data.trec import write_run
from maw_reranker.retrieve.engines import Engine, get_engine, resolve_engine_name
from maw_reranker.utils.io import remove_stale_temps, write_json

log = logging.getLogger(__name__)
DEFAULT_K1, DEFAULT_B = 0.9, 0.4
_INDEX_MARKER = "maw-index.json"


def pool_path(ds: Dataset, engine: str, k: int = 1000, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
              pools_dir: str | Path = "pools") -> Path:
    """Where ``build_pool`` writes (and looks for) this pool. ``engine`` must be concrete (not ``auto``)."""
    params = "" if (k1, b) == (DEFAULT_K1, DEFAULT_B) else f"-k1_{k1:g}-b_{b:g}"
    return Path(pools_dir) / ds.slug / f"bm25-{engine}-k{k}{params}.run"


def _source_stamp(ds: Dataset) -> dict:
    """What the inputs were: an ir_datasets id, or a local file's path, size and mtime (so edits rebuild)."""
    stamp: dict = {"source": ds.source, "kind": ds.kind}
    if ds.kind != "registry":
        path = Path(ds.source)
        path = path / "corpus.jsonl" if path.is_dir() else path
        stat = path.stat()
        stamp.update(size=stat.st_size, mtime=int(stat.st_mtime))
    return stamp


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pool_params(ds: Dataset, engine: str, k: int, k1: float, b: float) -> dict:
    """What a pool's metadata must record for the pool to be reused: its inputs and retrieval parameters."""
    return {"stamp": _source_stamp(ds), "engine": engine, "k": k, "k1": k1, "b": b}


def _stale_reason(path: Path, meta: dict | None, expected: dict) -> str | None:
    """Why the pool at ``path`` cannot be reused (None: it can)."""
    if meta is None:
        return "it has no valid metadata (a build interrupted before its .run.json was written?)"
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"its metadata records {key}={meta.get(key)!r}, not {value!r} (other inputs or parameters)"
    if "run_bytes" in meta and meta["run_bytes"] != path.stat().st_size:
        return f"it is {path.stat().st_size} bytes, its metadata says {meta['run_bytes']} (the file changed)"
    return None


def _ensure_index(engine: Engine, ds: Dataset, pools_dir: Path, force: bool, prebuilt: bool) -> str:
    """Open a cached index, a prebuilt one (pyserini), or build one atomically; return how it was obtained."""
    if prebuilt and ds.pyserini_index and hasattr(engine, "open_prebuilt") and engine.open_prebuilt(ds.pyserini_index):
        return f"prebuilt:{ds.pyserini_index}"
    index_dir = pools_dir / "_indexes" / ds.corpus_slug / engine.index_key()
    stamp = _source_stamp(ds)
    marker = _read_json(index_dir / _INDEX_MARKER)
    if not force and marker is not None and marker.get("stamp") == stamp:
        engine.open_index(index_dir)
        return f"cached:{index_dir}"
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(index_dir.parent, index_dir.name)  # temporaries of builds that were killed
    # Build beside the target and rename, so an interrupted build never leaves a half index that looks done.
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", suffix=".tmp", dir=index_dir.parent))
    try:
        build_dir = tmp / "index"
        build_dir.mkdir()
        log.info("indexing %s with %s into %s", ds.name, engine.name, index_dir)
        count = engine.build_index(ds.iter_docs(), build_dir)
        write_json(build_dir / _INDEX_MARKER, {"stamp": stamp, "docs": count, "engine": engine.name,
                                               "versions": engine.versions()})
        if index_dir.exists():
            shutil.rmtree(index_dir)
        build_dir.rename(index_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    engine.open_index(index_dir)
    return f"built:{index_dir}"


def build_pool(ds: Dataset, engine: str = "auto", k: int = 1000, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
               pools_dir: str | Path = "pools", force: bool = False, threads: int | None = None,
               prebuilt: bool = True) -> Path:
    """Write the BM25 top-``k`` run for ``ds``'s queries and return its path.

    Cached: an existing pool built from the same inputs is returned untouched unless ``force``. ``engine`` is
    ``bm25s``, ``pyserini`` or ``auto`` (pyserini when installed). ``prebuilt`` lets the pyserini engine use
    Pyserini's prebuilt index for registry datasets when it can be downloaded (else it indexes locally).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"option 'k' must be a positive integer, got {k!r}")
    name = resolve_engine_name(engine)
    pools_dir = Path(pools_dir)
    path = pool_path(ds, name, k, k1, b, pools_dir)
    meta_path = path.with_name(path.name + ".json")
    expected = _pool_params(ds, name, k, k1, b)
    if path.is_file() and not force:
        reason = _stale_reason(path, _read_json(meta_path), expected)
        if reason is None:
            log.info("pool exists, not rebuilding (use force to rebuild): %s", path)
            return path
        log.warning("rebuilding %s: %s", path, reason)
    eng = get_engine(name, k1=k1, b=b, threads=threads)
    start = time.perf_counter()
    how = _ensure_index(eng, ds, pools_dir, force, prebuilt)
    index_s = time.perf_counter() - start
    queries = ds.queries()
    if not queries:
        raise ValueError(f"dataset {ds.name!r} has no queries")
    start = time.perf_counter()
    # Anserini's -removeQuery (BEIR): a document with the query's own id is not a candidate; fetch one extra.
    run = eng.search(queries, k + 1 if ds.remove_query else k)
    if ds.remove_query:
        run = {qid: {d: s for d, s in hits.items() if d != qid} for qid, hits in run.items()}
    search_s = time.perf_counter() - start
    meta_path.unlink(missing_ok=True)  # from here until the new metadata is written, the pool is not reusable
    write_run(path, run, tag=f"bm25-{name}", depth=k)
    write_json(meta_path, {
        "dataset": ds.name, "split": ds.split, **expected, "run_bytes": path.stat().st_size,
        "index": how, "index_s": round(index_s, 3), "search_s": round(search_s, 3), "queries": len(queries),
        "empty_queries": sorted(q for q, hits in run.items() if not hits)[:20],
        "versions": eng.versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    log.info("wrote %s (%d queries; index %.1fs [%s], search %.1fs)", path, len(queries), index_s,
             how.split(":")[0], search_s)
    return path
