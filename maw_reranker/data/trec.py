"""TREC run and qrels files: strict readers (errors name file and line) and atomic writers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Mapping

from maw_reranker.utils.io import atomic_write

Run = dict  # qid -> {docid: score}
Qrels = dict  # qid -> {docid: grade}


class DataFormatError(ValueError):
    """Malformed input data; the message names the file and line."""


def read_run(path: str | Path) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``). Duplicate (qid, docid) pairs are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file not found: {path}")
    run: dict = defaultdict(dict)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            qid, _, docid, _rank, score, _tag = parts
            try:
                value = float(score)
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: score is not a number: {score!r}") from None
            if docid in run[qid]:
                raise DataFormatError(f"{path}:{lineno}: duplicate document {docid!r} for query {qid!r}")
            run[qid][docid] = value
    return dict(run)


def read_qrels(path: str | Path) -> Qrels:
    """Read TREC qrels (``qid iter docid grade``) or BEIR qrels TSV (``query-id corpus-id score``, header allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qrels file not found: {path}")
    qrels: dict = defaultdict(dict)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.split()
            if lineno == 1 and parts and parts[0].lower() in {"query-id", "qid", "query_id"}:
                continue
            if len(parts) == 4:
                qid, _, docid, grade = parts
            elif len(parts) == 3:
                qid, docid, grade = parts
            else:
                raise DataFormatError(f"{path}:{lineno}: expected 'qid 0 docid grade' or 'qid docid grade', got {len(parts)} columns")
            try:
                qrels[qid][docid] = int(float(grade))
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: relevance grade is not a number: {grade!r}") from None
    return dict(qrels)


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "maw", depth: int | None = None) -> None:
    """Write a TREC run atomically, each query sorted by descending score (ties by docid for determinism)."""
    with atomic_write(path) as handle:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            if depth is not None:
                ranked = ranked[:depth]
            for rank, (docid, score) in enumerate(ranked, 1):
                handle.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    with atomic_write(path) as handle:
        for qid in sorted(qrels):
            for docid, grade in sorted(qrels[qid].items()):
                handle.write(f"{qid} 0 {docid} {grade}\n")
