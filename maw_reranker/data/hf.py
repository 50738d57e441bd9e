"""Hugging Face ``datasets`` as a data source: a hub dataset id or local parquet/jsonl/json/csv/tsv files, read with
``datasets.load_dataset`` (in memory as Arrow, memory-mapped, or streamed), and the columns' roles.

* :func:`parse_source` is the one parser of a source spec: ``ID`` or ``ID:CONFIG`` (a hub dataset and its config,
  e.g. ``lightonai/ms-marco-en-bge:train``), a local file, comma-separated files of one format, or a folder. A spec
  is local when it starts with ``./`` ``../`` ``/`` or ``~``, has a data-file suffix, has more than one ``/`` or
  exists; a local path that does not exist is "not found", never a hub id.
* :func:`load_hf` loads it; hub failures (offline, unknown id) become one :class:`DatasetDownloadError` line naming the
  dataset, unreadable local files a :class:`DataFormatError` naming them, and a source without rows (an empty file,
  a header or schema only) one saying so.
* :func:`resolve_columns` maps roles (query, positive, negatives, ...) to columns, from ``hf_columns`` or the usual
  names, and tells the layout (``tuples``, ``labeled``, ``scored``) apart; a missing column is an error naming the
  role, the column and the dataset, and listing its columns.
* :class:`HFTexts`: an id -> text mapping over a queries or corpus table (the texts of id-only layouts).

The conversion of rows into training groups is in ``maw_reranker/train/hf_source.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

from maw_reranker.data.dataset import DatasetDownloadError
from maw_reranker.data.readers import DataFormatError

# Role -> the column names looked for when hf_columns does not name one (first present wins).
ROLES: dict[str, tuple[str, ...]] = {
    "query": ("query", "query_id", "qid", "question", "anchor"),
    "positive": ("positive", "pos", "positive_id", "positives", "positive_ids", "pos_id"),
    "negatives": ("negatives", "neg", "negative_ids", "negative", "negative_id", "neg_ids"),
    "document": ("document", "passage", "doc", "text", "document_id", "passage_id", "doc_id", "docid", "corpus_id"),
    "label": ("label", "labels", "relevance", "grade"),
    "score": ("score", "teacher_score"),
    "documents": ("document_ids", "documents", "doc_ids", "passage_ids", "passages", "docids"),
    "scores": ("scores", "teacher_scores"),
    "positive_score": ("positive_score", "pos_score", "pos_scores", "positive_scores"),
    "negative_scores": ("negative_scores", "neg_scores", "negatives_scores"),
    # columns of the hf_queries / hf_corpus tables
    "queries_id": ("query_id", "_id", "id", "qid"),
    "queries_text": ("text", "query"),
    "corpus_id": ("document_id", "_id", "id", "doc_id", "docid", "passage_id", "pid", "corpus_id"),
    "corpus_text": ("text", "passage", "document", "contents", "content", "body"),
}
TABLE_ROLES = ("queries_id", "queries_text", "corpus_id", "corpus_text")  # columns of hf_queries / hf_corpus
ROW_ROLES = tuple(role for role in ROLES if role not in TABLE_ROLES)
# The usual names (above) of row columns that hold ids, not texts: their texts need a table (hf_queries /
# hf_corpus / dataset). A column under another name is taken as texts; values are never inspected.
ID_COLUMNS = frozenset({"query_id", "qid", "positive_id", "positive_ids", "pos_id", "negative_ids", "negative_id",
                        "neg_ids", "document_id", "passage_id", "doc_id", "docid", "corpus_id", "document_ids",
                        "doc_ids", "passage_ids", "docids"})
QUERY_ROLES = ("query",)
DOCUMENT_ROLES = ("positive", "negatives", "document", "documents")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "tuples": ("query", "positive", "negatives"),
    "labeled": ("query", "document", "label"),
    "scored": ("query", "documents", "scores"),
}
OPTIONAL_ROLES = {"tuples": ("positive_score", "negative_scores"), "labeled": ("score",), "scored": ()}
NUMBERED_NEGATIVE = re.compile(r"^(?:negative|neg)_?(\d+)$")  # negative_1 ... negative_n (sentence-transformers)
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
            ".jsonl.gz": "json", ".json.gz": "json", ".csv.gz": "csv"}


def check_roles(mapping: Mapping, option: str = "hf_columns") -> None:
    """``mapping`` is role -> column name(s): every role known, every column a name (a list only for negatives)."""
    for role, column in mapping.items():
        if role not in ROLES:
            raise ValueError(f"option '{option}': unknown role {role!r}; roles: {', '.join(ROLES)}")
        names = column if isinstance(column, list) and role == "negatives" else [column]
        if not names or not all(isinstance(c, str) and c.strip() for c in names):
            raise ValueError(f"option '{option}': role {role!r} needs a column name, got {column!r}")


@dataclass(frozen=True)
class HFSource:
    """A parsed source spec: a hub dataset (``path``, ``name`` = its config) or local ``files`` / a folder."""

    spec: str
    path: str
    name: Optional[str] = None
    files: tuple[str, ...] = ()
    builder: Optional[str] = None
    local: bool = False

    @property
    def label(self) -> str:
        if self.files:
            return ", ".join(self.files)
        return f"{self.path}:{self.name}" if self.name else self.path


def _suffix(path: str) -> str:
    low = path.lower()
    for suffix in sorted(BUILDERS, key=len, reverse=True):
        if low.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def _looks_local(part: str) -> bool:
    """A spec is a local path when it starts with ./ ../ / or ~, has a data-file suffix, or has more than one '/'
    (a hub id is ORG/NAME); anything else is a hub id unless that path exists."""
    return (part.startswith(("./", "../", "/", "~")) or part in (".", "..") or _suffix(part) in BUILDERS
            or part.count("/") > 1 or Path(part).expanduser().exists())


def parse_source(spec: str, option: str = "hf_dataset") -> HFSource:
    """The one parser of a source spec (see the module doc). Local paths must exist."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError(f"option '{option}' is empty")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not any(_looks_local(p) for p in parts):
        if len(parts) > 1:
            raise ValueError(f"option '{option}': {spec!r}: several hub ids; give one (ID or ID:CONFIG)")
        path, _, name = spec.partition(":")
        return HFSource(spec, path, name or None)
    paths = [os.path.expanduser(p) for p in parts]  # as given (./data stays ./data in errors)
    for path in paths:
        if not Path(path).exists():
            if _suffix(path) in BUILDERS:
                raise FileNotFoundError(f"option '{option}': file not found: {path}")
            raise FileNotFoundError(f"option '{option}': folder or file not found: {path} (taken as a local path: it "
                                    "starts with ./ ../ / or ~ or has more than one '/'; a hub id is ORG/NAME)")
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return HFSource(spec, paths[0], local=True)
    builders = {BUILDERS.get(_suffix(p)) for p in paths}
    if None in builders or len(builders) != 1:
        raise ValueError(f"option '{option}': {spec!r}: files must be all of one format among "
                         f"{', '.join(sorted(BUILDERS))}")
    return HFSource(spec, paths[0], files=tuple(paths), builder=builders.pop(), local=True)


def load_hf(source: HFSource, split: str = "train", streaming: bool = False):
    """``datasets.load_dataset`` of ``source``: a ``Dataset`` (Arrow, memory-mapped) or, with ``streaming``, an
    ``IterableDataset``. ``split`` picks the split of a hub dataset or a folder (whose splits ``datasets`` tells from
    the file names, e.g. ``train-*.parquet`` / ``test-*.parquet``; a folder without split names is one split,
    ``train``); files given by name form one split (``train``), whatever ``split`` says. A source without rows is a
    :class:`DataFormatError` saying so (a stream is peeked at: its first row)."""
    if source.local and _local_files_empty(source):  # before datasets, whose errors on empty files say otherwise
        raise _no_rows(source, split)
    ds = _load(source, split, streaming)
    if (next(iter(ds), None) is None) if streaming else len(ds) == 0:
        raise _no_rows(source, split)
    return ds


def _no_rows(source: HFSource, split: str) -> DataFormatError:
    where = "" if source.files else f" (split {split})"
    return DataFormatError(f"{source.label}: no rows{where}")


def _local_files_empty(source: HFSource) -> bool:
    """Whether every data file of a local source holds no row: parquet files of 0 rows, csv/tsv files of a header
    line at most, json/jsonl files of white space only. False when unsure (an unreadable file: its own error
    stands)."""
    import gzip

    files = [Path(f) for f in source.files] or [p for p in Path(source.path).rglob("*")
                                                if p.is_file() and _suffix(str(p)) in BUILDERS]
    if not files:
        return False
    try:
        for path in files:
            if _suffix(str(path)) == ".parquet":
                import pyarrow.parquet as pq

                if pq.read_metadata(str(path)).num_rows:
                    return False
                continue
            header = 1 if BUILDERS[_suffix(str(path))] == "csv" else 0
            opener = gzip.open if str(path).lower().endswith(".gz") else open
            with opener(path, "rb") as handle:
                lines = 0
                for line in handle:
                    lines += bool(line.strip())
                    if lines > header:
                        return False
    except Exception:  # noqa: BLE001 - unreadable: not known to be empty
        return False
    return True


def _load(source: HFSource, split: str, streaming: bool):
    import datasets

    kwargs: dict = {"streaming": streaming}
    try:
        if source.files:
            if source.builder == "csv" and all(_suffix(f).startswith(".tsv") for f in source.files):
                kwargs["delimiter"] = "\t"
            return datasets.load_dataset(source.builder, data_files=list(source.files), split="train", **kwargs)
        return datasets.load_dataset(source.path, source.name, split=split, **kwargs)
    except FileNotFoundError as exc:
        if source.local:
            raise
        raise DatasetDownloadError(f"Hugging Face dataset {source.label!r} (split {split}) cannot be loaded: "
                                   f"{_first_line(exc)}; offline? load it once with network access (it is then read "
                                   "from the Hugging Face cache) or give local parquet/jsonl files") from None
    except (ValueError, KeyError) as exc:
        if source.local:
            raise DataFormatError(f"{source.label}: cannot be read as {source.builder or 'a dataset'}: "
                                  f"{_first_line(exc)}") from None
        raise ValueError(f"Hugging Face dataset {source.label!r} (split {split}): {_first_line(exc)}") from None
    except Exception as exc:  # network errors of huggingface_hub / requests / fsspec, Arrow parse errors
        if source.local:
            raise DataFormatError(f"{source.label}: cannot be read as {source.builder or 'a dataset'}: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from None
        raise DatasetDownloadError(f"Hugging Face dataset {source.label!r} (split {split}) cannot be loaded: "
                                   f"{type(exc).__name__}: {_first_line(exc)}; offline? load it once with network "
                                   "access (it is then read from the Hugging Face cache) or give local parquet/jsonl "
                                   "files") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def column_names(ds) -> list[str]:
    """The columns of a Dataset or IterableDataset (a stream of unknown features is peeked at: first row)."""
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    first = next(iter(ds), None)
    return list(first) if first is not None else []


@dataclass(frozen=True)
class Columns:
    """Which column plays each role; ``negatives`` may be several columns (``negative_1`` ... ``negative_n``)."""

    layout: str
    roles: dict[str, object] = field(default_factory=dict)

    def get(self, role: str):
        return self.roles.get(role)


def _names(column) -> list[str]:
    if column is None:
        return []
    return list(column) if isinstance(column, list) else [column]


def _find(role: str, columns: list[str], mapping: Mapping, label: str, taken: Iterable[str] = ()):
    """The column of ``role``: the mapped one (which must exist), else the first usual name present and not
    ``taken`` (claimed by the mapping or another role)."""
    if role in mapping:
        wanted = mapping[role]
        for name in _names(wanted):
            if name not in columns:
                raise DataFormatError(f"{label}: no column {name!r} (hf_columns: {{{role}: {name}}}); its columns: "
                                      f"{', '.join(columns)}")
        return wanted
    taken = set(taken)
    free = [c for c in columns if c not in taken]
    for name in ROLES[role]:
        if name in free:
            return name
    if role == "negatives":
        numbered = sorted((int(m.group(1)), c) for c in free if (m := NUMBERED_NEGATIVE.match(c)))
        if numbered:
            return [c for _, c in numbered]
    return None


def resolve_columns(columns: list[str], mapping: Mapping, layout: str, label: str) -> Columns:
    """The roles of ``columns`` (a dataset's) for ``layout`` (``auto``: the first layout whose roles are all there:
    tuples, then scored, then labeled). Mapped roles (``hf_columns``) come first; auto-detection skips the columns
    the mapping or another role already holds, and one column never fills two roles. Errors name the role, the
    column looked for and ``label`` (the dataset): a missing mapped column, a column mapped to two roles, a mapped
    role the layout does not use."""
    check_roles(mapping)
    mapped = [role for role in ROW_ROLES if role in mapping]
    found: dict = {}
    owner: dict[str, str] = {}  # column -> the role that holds it
    for role in mapped + [r for r in ROW_ROLES if r not in mapping]:
        found[role] = _find(role, columns, mapping, label, owner)
        for name in _names(found[role]):
            if name in owner:
                raise DataFormatError(f"{label}: column {name!r} is mapped to two roles, {owner[name]!r} and "
                                      f"{role!r} (hf_columns); give each role its own column")
            owner[name] = role
    if layout == "auto":
        for name in ("tuples", "scored", "labeled"):
            if all(found[r] is not None for r in LAYOUTS[name]):
                layout = name
                break
        else:
            shapes = "; ".join(f"{name}: {', '.join(roles)}" for name, roles in LAYOUTS.items())
            raise DataFormatError(f"{label}: cannot tell its layout from its columns ({', '.join(columns)}); the "
                                  f"layouts and their roles are {shapes}; set hf_layout and map the columns with "
                                  "hf_columns, e.g. {query: q, positive: pos, negatives: negs}")
    if layout not in LAYOUTS:
        raise ValueError(f"option 'hf_layout': unknown layout {layout!r}; allowed: auto, {', '.join(LAYOUTS)}")
    for role in LAYOUTS[layout]:
        if found[role] is None:
            raise DataFormatError(f"{label}: no column for role {role!r} of layout {layout} (looked for "
                                  f"{', '.join(ROLES[role])}); map it with hf_columns: {{{role}: COLUMN}}; its "
                                  f"columns: {', '.join(columns)}")
    used = LAYOUTS[layout] + OPTIONAL_ROLES[layout]
    unused = [role for role in mapped if role not in used]
    if unused:
        raise DataFormatError(f"{label}: hf_columns maps role {unused[0]!r} (column {mapping[unused[0]]!r}), which "
                              f"layout {layout} does not use (its roles: {', '.join(used)}); remove it from "
                              "hf_columns or set hf_layout")
    roles = {r: found[r] for r in used if found[r] is not None}
    return Columns(layout, roles)


def id_columns(columns: Columns) -> dict[str, list[str]]:
    """``queries`` / ``documents`` -> the resolved row columns whose names (:data:`ID_COLUMNS`) say they hold ids."""
    def ids(roles) -> list[str]:
        return [c for r in roles for c in _names(columns.get(r)) if c in ID_COLUMNS]

    return {"queries": ids(QUERY_ROLES), "documents": ids(DOCUMENT_ROLES)}


class HFTexts(Mapping):
    """id -> text over a queries or corpus table (``Dataset``): ids indexed once, texts read per lookup (the Arrow
    table stays memory-mapped). A ``title`` column, when present, is put before the text as in BEIR."""

    def __init__(self, ds, id_column: str, text_column: str, label: str):
        self.ds, self.text_column, self.label = ds, text_column, label
        self.title_column = "title" if "title" in ds.column_names and text_column != "title" else None
        ids = [str(i) for i in ds[id_column]]
        self.index = {docid: row for row, docid in enumerate(ids)}
        if len(self.index) != len(ids):
            seen: set = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise DataFormatError(f"{label}: duplicate id {dup!r} in column {id_column!r}")

    def _text(self, row: Mapping) -> str:
        text = str(row[self.text_column] or "")
        title = row.get(self.title_column) if self.title_column else None
        return f"{title} {text}".strip() if title else text

    def __getitem__(self, key: str) -> str:
        return self._text(self.ds[self.index[key]])

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        found = [k for k in dict.fromkeys(keys) if k in self.index]
        if not found:
            return {}
        batch = self.ds[[self.index[k] for k in found]]
        rows = [{c: batch[c][i] for c in batch} for i in range(len(found))]
        return {k: self._text(r) for k, r in zip(found, rows)}

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key) -> bool:
        return key in self.index


def load_texts(spec: str, split: str, mapping: Mapping, kind: str, option: str) -> HFTexts:
    """The id -> text table of ``spec`` (``kind``: ``queries`` or ``corpus``; columns from ``mapping`` roles
    ``<kind>_id`` / ``<kind>_text`` or the usual names)."""
    source = parse_source(spec, option)
    ds = load_hf(source, split)
    columns = column_names(ds)
    picked = {}
    for part in ("id", "text"):
        role = f"{kind}_{part}"
        picked[part] = _find(role, columns, mapping, f"{source.label} ({option})", _names(picked.get("id")))
        if picked[part] is None:
            raise DataFormatError(f"{source.label} ({option}): no {part} column (looked for "
                                  f"{', '.join(ROLES[role])}); map it with hf_columns: {{{role}: COLUMN}}; its "
                                  f"columns: {', '.join(columns)}")
    return HFTexts(ds, picked["id"], picked["text"], f"{source.label} ({option})")


class TextIds(Mapping):
    """The identity mapping: for layouts whose rows hold the texts themselves, a group's ids *are* the texts."""

    def __getitem__(self, key: str) -> str:
        return key

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        return {k: k for k in keys}

    def __contains__(self, key) -> bool:
        return isinstance(key, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


__all__ = ["BUILDERS", "Columns", "HFSource", "HFTexts", "ID_COLUMNS", "LAYOUTS", "ROLES", "TextIds", "check_roles",
           "column_names", "id_columns", "load_hf", "load_texts", "parse_source", "resolve_columns"]
