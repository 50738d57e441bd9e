"""The one candidate resolver: which documents are reranked (eval) or sampled as negatives (training).

In order: an explicit TREC run (option ``candidates``), else the candidates the dataset ships (RankLLM JSON,
a docs file with its ``run``, the official BM25 top-1000 ``scoreddocs`` of MS MARCO-style ir_datasets), else the
dataset's BM25 pool, built once and cached (``build_pool``). Evaluation, training negatives and training's dev
set all come through here, with the same options and defaults.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

Rows = Callable[[], Iterable[tuple[str, str, float]]]


@dataclass
class Candidates:
    """Candidates in memory (``run``: qid -> {docid: score}) or, when streaming, as a row factory (``rows``)."""

    source: dict  # {"kind": "trec_run" | "dataset_candidates" | "scoreddocs" | "bm25_pool", ...}
    run: Optional[dict] = None
    rows: Optional[Rows] = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return self.source.get("path") or self.source.get("source") or self.source["kind"]


def _trec_rows(path: Path) -> Rows:
    from maw_reranker.data.trec import iter_run_rows

    return lambda: iter_run_rows(path)


def resolve_candidates(ds, explicit: str | Path | None = None, *, engine: str = "auto", k: int = 1000,
                       pools_dir: str | Path = "pools", streaming: bool = False, guard=None) -> Candidates:
    """Candidates of ``ds`` (a ``Dataset``); see the module docstring for the order.

    ``streaming``: return a row factory instead of reading everything into memory (MS MARCO-size training).
    ``guard``: a context manager around pool building (Accelerate's ``main_process_first`` in training).
    """
    from maw_reranker.data.trec import read_run

    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"option 'candidates': run file not found: {path}")
        source = {"kind": "trec_run", "path": str(path.resolve())}
        return Candidates(source, rows=_trec_rows(path)) if streaming else Candidates(source, run=read_run(path))
    shipped = ds.candidates()
    if shipped is not None:
        return Candidates({"kind": "dataset_candidates", "source": ds.source}, run=shipped)
    if ds.irds.has_scoreddocs():  # e.g. MS MARCO: the official BM25 top-1000
        def rows():
            return ((s.query_id, s.doc_id, float(s.score)) for s in ds.irds.scoreddocs_iter())

        source = {"kind": "scoreddocs", "source": f"{ds.irds_id} scoreddocs"}
        if streaming:
            return Candidates(source, rows=rows)
        run: dict = {}
        for qid, did, score in rows():
            run.setdefault(qid, {})[did] = score
        return Candidates(source, run=run)
    from maw_reranker.retrieve.pools import build_pool

    with (guard or contextlib.nullcontext)():
        path = Path(build_pool(ds, engine=engine, k=k, pools_dir=pools_dir))
    source = {"kind": "bm25_pool", "path": str(path.resolve())}
    return Candidates(source, rows=_trec_rows(path)) if streaming else Candidates(source, run=read_run(path))
