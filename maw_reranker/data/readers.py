"""Strict text-file reading: UTF-8 lines and JSON, local docs/queries files (TSV, JSONL), RankLLM candidate JSON.

Every error names the file and line (or JSON entry), because a silent skip would change the experiment. Every text
file goes through :func:`iter_lines` or :func:`read_text`: a UTF-8 byte-order mark at the start is dropped, and bytes
that are not UTF-8 are reported with the file and line rather than as a bare codec error.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Iterator, NamedTuple

_DOC_ID_KEYS = ("_id", "id", "doc_id", "docid")
_DOC_TEXT_KEYS = ("text", "contents", "content", "body")
_QUERY_ID_KEYS = ("_id", "id", "query_id", "qid")
_QUERY_TEXT_KEYS = ("text", "query", "title")
_TSV_HEADER_IDS = {"id", "_id", "docid", "doc_id", "qid", "query_id", "query-id", "pid"}


class DataFormatError(ValueError):
    """Malformed input data; the message names the file and line."""


def _not_utf8(path: Path, lineno: int, line: bytes, start: int) -> DataFormatError:
    hint = ""
    if lineno == 1 and line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        hint = " (it starts with a UTF-16 byte-order mark: the file is UTF-16)"
    return DataFormatError(f"{path}:{lineno}: not valid UTF-8: byte 0x{line[start]:02x} at byte {start + 1} of the "
                           f"line{hint}; save the file as UTF-8")


def _first_undecodable(path: Path) -> DataFormatError:
    """The error for the first line of ``path`` that is not UTF-8 (text decoding fails per chunk, not per line)."""
    with path.open("rb") as handle:
        for lineno, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _not_utf8(path, lineno, line, exc.start)
    return DataFormatError(f"{path}: not valid UTF-8; save the file as UTF-8")  # a sequence cut at the very end


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(lineno, line)`` for every line of a UTF-8 text file, without its ending (``\\n`` or ``\\r\\n``).

    A byte-order mark at the start is dropped; bytes that are not UTF-8 raise :class:`DataFormatError` naming the
    file and line. Lines are split at ``\\n`` only, so line numbers are those of any editor.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="\n") as handle:
            for lineno, line in enumerate(handle, 1):
                if line.endswith("\n"):
                    line = line[:-2] if line.endswith("\r\n") else line[:-1]
                yield lineno, line
    except UnicodeDecodeError:
        raise _first_undecodable(path) from None


def read_text(path: str | Path) -> str:
    """The whole text of a UTF-8 file (for JSON documents): a leading byte-order mark dropped, bad bytes reported
    with the file and line."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        line = data[start:end if end >= 0 else len(data)]
        raise _not_utf8(path, data.count(b"\n", 0, exc.start) + 1, line, exc.start - start) from None


class Record(NamedTuple):
    id: str
    text: str
    title: str
    lineno: int


_SINGULAR = {"docs": "doc", "queries": "query"}


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _pick(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, what: str, required: bool = True) -> str:
    for key in keys:
        if key in obj and obj[key] is not None:
            return str(obj[key])
    if required:
        raise DataFormatError(f"{path}:{lineno}: missing {what} (expected one of the keys {', '.join(keys)})")
    return ""


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _iter_tsv(path: Path, what: str, max_cols: int) -> Iterator[Record]:
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if lineno == 1 and cols[0].strip().lower() in _TSV_HEADER_IDS:
            continue  # a header row
        if len(cols) < 2 or len(cols) > max_cols:
            shape = "'id<TAB>text'" if max_cols == 2 else "'id<TAB>text' or 'id<TAB>title<TAB>text'"
            raise DataFormatError(f"{path}:{lineno}: expected {shape} for {what}, got {len(cols)} columns")
        if not cols[0].strip():
            raise DataFormatError(f"{path}:{lineno}: empty {what} id")
        title, text = (cols[1], cols[2]) if len(cols) == 3 else ("", cols[1])
        yield Record(cols[0].strip(), text, title, lineno)


def iter_records(path: str | Path, kind: str) -> Iterator[Record]:
    """Yield docs (``kind="docs"``) or queries (``kind="queries"``) from a .tsv or .jsonl file, rejecting duplicates."""
    path = require_file(path, kind)
    suffixes = path.suffix.lower()
    if suffixes in {".jsonl", ".json"}:
        id_keys, text_keys = (_DOC_ID_KEYS, _DOC_TEXT_KEYS) if kind == "docs" else (_QUERY_ID_KEYS, _QUERY_TEXT_KEYS)
        records = (Record(_pick(obj, id_keys, path, n, f"{_SINGULAR[kind]} id"),
                          _pick(obj, text_keys, path, n, "text"),
                          str(obj.get("title") or "") if kind == "docs" else "", n)
                   for n, obj in _iter_jsonl(path))
    elif suffixes in {".tsv", ".txt", ".tab"}:
        records = _iter_tsv(path, _SINGULAR[kind], 3 if kind == "docs" else 2)
    else:
        raise DataFormatError(f"{path}: unsupported {kind} format {path.suffix!r}; use .tsv or .jsonl")
    seen: dict[str, int] = {}
    count = 0
    for record in records:
        if record.id in seen:
            raise DataFormatError(f"{path}:{record.lineno}: duplicate {_SINGULAR[kind]} id {record.id!r} "
                                  f"(first seen on line {seen[record.id]})")
        seen[record.id] = record.lineno
        if kind == "queries" and not record.text.strip():  # an empty query would be scored as if it were one
            raise DataFormatError(f"{path}:{record.lineno}: query {record.id!r} has no text")
        count += 1
        yield record
    if count == 0:
        raise DataFormatError(f"{path}: no {kind} found (empty file)")


def read_queries(path: str | Path) -> dict[str, str]:
    return {r.id: r.text for r in iter_records(path, "queries")}


class Candidates(NamedTuple):
    queries: dict[str, str]
    docs: dict[str, str]
    run: dict[str, dict[str, float]]


def read_rankllm_candidates(path: str | Path) -> Candidates:
    """Read the RankLLM candidate list ``[{"query": str, "hits": [{"qid", "docid", "content", "score"}]}]``."""
    path = require_file(path, "candidates")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of {{'query', 'hits'}} entries, got {type(data).__name__}")
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    run: dict[str, dict[str, float]] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "query" not in entry or not isinstance(entry.get("hits"), list):
            raise DataFormatError(f"{where}: expected an object with 'query' (str) and 'hits' (list)")
        hits = entry["hits"]
        qid = str(entry.get("qid", hits[0].get("qid") if hits and isinstance(hits[0], dict) else ""))
        if not qid:
            raise DataFormatError(f"{where}: no query id (no 'qid' on the entry and no hits)")
        if qid in queries:
            raise DataFormatError(f"{where}: duplicate query id {qid!r}")
        queries[qid] = str(entry["query"])
        ranked: dict[str, float] = {}
        for j, hit in enumerate(hits):
            if not isinstance(hit, dict) or "docid" not in hit or "content" not in hit:
                raise DataFormatError(f"{where}, hit {j}: expected an object with 'docid' and 'content'")
            if str(hit.get("qid", qid)) != qid:
                raise DataFormatError(f"{where}, hit {j}: qid {hit['qid']!r} differs from the entry's {qid!r}")
            docid = str(hit["docid"])
            if docid in ranked:
                raise DataFormatError(f"{where}, hit {j}: duplicate document {docid!r} for query {qid!r}")
            try:
                # Without a score, keep the list order: a decreasing pseudo-score.
                ranked[docid] = float(hit["score"]) if hit.get("score") is not None else float(len(hits) - j)
            except (TypeError, ValueError):
                raise DataFormatError(f"{where}, hit {j}: score is not a number: {hit['score']!r}") from None
            docs.setdefault(docid, str(hit["content"]))
        run[qid] = ranked
    if not queries:
        raise DataFormatError(f"{path}: no entries (empty list)")
    return Candidates(queries, docs, run)
