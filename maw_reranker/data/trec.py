"""TREC run and qrels files: strict readers (errors name file and line) and atomic writers."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Mapping

from maw_reranker.data.readers import DataFormatError, iter_lines
from maw_reranker.utils.io import atomic_write

__all__ = ["DataFormatError", "QRELS_DUPLICATES", "Qrels", "Run", "iter_run_rows", "read_qrels", "read_run", "write_qrels", "write_run"]

log = logging.getLogger(__name__)
Run = dict  # qid -> {docid: score}
Qrels = dict  # qid -> {docid: grade}
QRELS_DUPLICATES = ("error", "last")  # what read_qrels does with a second judgment of a (query, document) pair


def _iter_fields(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """The one line loop of run and qrels files: ``(lineno, whitespace-separated fields)`` per non-blank line.

    The file must exist; a byte-order mark is dropped and bytes that are not UTF-8 are reported with file and line
    (:func:`~maw_reranker.data.readers.iter_lines`).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    for lineno, line in iter_lines(path):
        fields = line.split()
        if fields:
            yield lineno, fields


def _first_line(path: Path, qid: str, docid: str | None, doc_column: int) -> int:
    """The line where (qid, docid) (``docid`` None: the query) first occurs: rescanned only to report a duplicate, so
    reading keeps no line map."""
    for lineno, parts in _iter_fields(path, "input"):
        if len(parts) >= 3 and parts[0] == qid and (docid is None or parts[doc_column] == docid):
            return lineno
    raise DataFormatError(f"{path}: the file changed while it was read")


def _run_score(path: Path, lineno: int, parts: list[str]) -> float:
    """The score of a run line; its rank must be an integer and its score a finite number (NaN has no order)."""
    try:
        int(parts[3])
    except ValueError:
        raise DataFormatError(f"{path}:{lineno}: rank is not an integer: {parts[3]!r}") from None
    try:
        value = float(parts[4])
    except ValueError:
        raise DataFormatError(f"{path}:{lineno}: score is not a number: {parts[4]!r}") from None
    if not math.isfinite(value):
        raise DataFormatError(f"{path}:{lineno}: score is not a finite number: {parts[4]!r}")
    return value


def read_run(path: str | Path) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``). Duplicate (qid, docid) pairs are an error."""
    path = Path(path)
    run: dict = defaultdict(dict)
    for lineno, parts in _iter_fields(path, "run"):
        if len(parts) != 6:
            raise DataFormatError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
        qid, _, docid, _rank, score, _tag = parts
        value = _run_score(path, lineno, parts)
        if docid in run[qid]:
            raise DataFormatError(f"{path}:{lineno}: duplicate document {docid!r} for query {qid!r} "
                                  f"(first at {path}:{_first_line(path, qid, docid, 2)})")
        run[qid][docid] = value
    if not run:
        raise DataFormatError(f"{path}: the run is empty (no 'qid Q0 docid rank score tag' line)")
    return dict(run)


def iter_run_rows(path: str | Path) -> Iterator[tuple[str, str, float]]:
    """Stream a TREC run as ``(qid, docid, score)`` rows without loading it (MS MARCO-size training pools).

    The checks of :func:`read_run`, with the same messages: a duplicate (qid, docid) pair and an empty run are errors.
    A streamed run is read one query at a time (its consumers group rows by consecutive query), so only the current
    query's docids and the ids of the queries already read are held, and a query whose lines are not together is an
    error too: its pool would be split in two, and a duplicate across its parts could not be seen.
    """
    path = Path(path)
    current, docids, finished = None, set(), set()
    for lineno, parts in _iter_fields(path, "run"):
        if len(parts) != 6:
            raise DataFormatError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
        qid, docid = parts[0], parts[2]
        value = _run_score(path, lineno, parts)
        if qid != current:
            if qid in finished:
                raise DataFormatError(f"{path}:{lineno}: the lines of query {qid!r} are not contiguous (it began at "
                                      f"{path}:{_first_line(path, qid, None, 2)}); a streamed run is read one query "
                                      "at a time: sort it by query (e.g. sort -s -k1,1)")
            if current is not None:
                finished.add(current)
            current, docids = qid, set()
        if docid in docids:
            raise DataFormatError(f"{path}:{lineno}: duplicate document {docid!r} for query {qid!r} "
                                  f"(first at {path}:{_first_line(path, qid, docid, 2)})")
        docids.add(docid)
        yield qid, docid, value
    if current is None:
        raise DataFormatError(f"{path}: the run is empty (no 'qid Q0 docid rank score tag' line)")


def read_qrels(path: str | Path, *, duplicates: str = "error") -> Qrels:
    """Read TREC qrels (``qid iter docid grade``) or BEIR qrels TSV (``query-id corpus-id score``, header allowed).

    A second judgment of the same (query, document) pair is an error naming both lines, unless ``duplicates="last"``:
    then the last one wins and a warning says how many were overridden. A file without judgments is an error.
    """
    if duplicates not in QRELS_DUPLICATES:
        raise ValueError(f"option 'duplicates' must be one of {', '.join(map(repr, QRELS_DUPLICATES))}, "
                         f"got {duplicates!r}")
    qrels: dict = defaultdict(dict)
    overridden: list[tuple[str, str, int]] = []  # (qid, docid, later line)
    header_possible = True
    path = Path(path)
    for lineno, parts in _iter_fields(path, "qrels"):
        if header_possible and parts[0].lower() in {"query-id", "qid", "query_id"}:
            header_possible = False
            continue
        header_possible = False
        if len(parts) == 4:
            qid, _, docid, grade = parts
        elif len(parts) == 3:
            qid, docid, grade = parts
        else:
            raise DataFormatError(f"{path}:{lineno}: expected 'qid 0 docid grade' or 'qid docid grade', got {len(parts)} columns")
        try:
            number = float(grade)
            value = int(number)
            if value != number:
                raise ValueError(grade)
        except (ValueError, OverflowError):
            shape = " (a column missing? expected 'qid 0 docid grade')" if len(parts) == 3 else ""
            raise DataFormatError(f"{path}:{lineno}: relevance grade must be an integer, got {grade!r}{shape}") from None
        if docid in qrels[qid]:
            if duplicates == "error":
                earlier = _first_line(path, qid, docid, -2)
                raise DataFormatError(
                    f"{path}:{lineno}: duplicate judgment of document {docid!r} for query {qid!r}: grade {value} here, "
                    f"grade {qrels[qid][docid]} at {path}:{earlier}; keep one of the two lines")
            overridden.append((qid, docid, lineno))
        qrels[qid][docid] = value
    if not qrels:
        raise DataFormatError(f"{path}: no relevance judgments (the qrels file is empty)")
    if overridden:
        qid, docid, later = overridden[0]
        earlier = _first_line(path, qid, docid, -2)
        log.warning("%s: %d duplicate (query, document) judgments, the last one wins (the first: line %d "
                    "overridden by line %d)", path, len(overridden), earlier, later)
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
