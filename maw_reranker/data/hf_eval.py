"""Hugging Face datasets as EVALUATION data (``dataset: hf:SPEC``): rows -> queries, documents, qrels and the
dataset's own candidates (a TREC run, which the candidate resolver takes as "dataset candidates"), the
(query, positives, candidates) samples of sentence-transformers' ``CrossEncoderRerankingEvaluator``.

``SPEC``, loading and column roles are ``data/hf.py``'s (:func:`~maw_reranker.data.hf.parse_source`,
:func:`~maw_reranker.data.hf.load_hf`, :func:`~maw_reranker.data.hf.resolve_columns`), read with the ``hf_*``
options (``split``, ``layout``, ``columns``, ``queries``, ``corpus`` here). Layouts:

* ``labeled``: rows (query, document, label[, score]) grouped by query. The qrels are the labels: integer grades
  (ints, bools, or numbers / strings with an integer value: ``1.0``, ``"2"``); a label that is not an integer
  (``0.7``) is an error naming the row and the column: threshold or round such labels first. The candidates are the
  query's rows: by the ``score`` column (every row needs a finite score), else in row order (the first row ranks
  first). A (query, document) pair judged twice follows ``qrels_duplicates`` (error, or the last row wins).
* ``tuples``: rows (query, positive, negatives...) grouped by query: every positive (a list cell: each item) is
  judged 1, and the candidates are the positives and negatives (deduplicated; a document that is a positive of the
  query anywhere stays a positive), shuffled with a fixed seed (:data:`SHUFFLE_SEED` and the query) so the positive
  is not always first; the same data always gives the same order. Score columns are ignored.
* ``scored`` (teacher scores, no labels) is an error: it has nothing to evaluate against.

A document is relevant when its grade is >= 1 (ir_measures' default). A query without a relevant document is left
out with a warning, as the metrics leave out run queries without relevant judgments; none at all is an error, as is
a dataset without rows. Texts: with ``queries`` / ``corpus`` (``hf_queries`` / ``hf_corpus``) the row values are ids
looked up there (ids without a text are reported at reranking, by ``on_missing``); otherwise the rows hold the
texts, and the ids are ``q<N>`` / ``d<N>`` in order of first appearance (one id per distinct text). A query or
document column under an id name (``data/hf.ID_COLUMNS``) without its table is an error, as in training.

The name (the output folders) is the hub ``ID[:CONFIG]``, the folder's name or the first file's stem, slugified,
with ``-<split>`` for a hub dataset or a folder; ``name`` replaces it.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ir_datasets.datasets.base import Dataset as IrdsDataset
from ir_datasets.formats import GenericDoc

from maw_reranker.data.dataset import Dataset, slugify
from maw_reranker.data.hf import (BUILDERS, HFSource, TextIds, column_names, id_columns, load_hf, load_texts,
                                  parse_source, resolve_columns)
from maw_reranker.data.local import LocalDocs, LocalQrels, LocalQueries, LocalScoredDocs, register
from maw_reranker.data.readers import DataFormatError
from maw_reranker.data.trec import QRELS_DUPLICATES
from maw_reranker.utils.text import preview

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
HF_MEASURES = ("nDCG@10", "RR@10", "AP")  # CrossEncoderRerankingEvaluator's NDCG@10, MRR@10 and MAP
SHUFFLE_SEED = 42  # the order of a tuples query's candidates: random.Random(f"{SHUFFLE_SEED}:{query}")
RELEVANT = 1  # a grade >= this is relevant (ir_measures' default)

Judgments = dict[str, dict[str, int]]
Ranking = dict[str, dict[str, float]]


def is_hf(dataset) -> bool:
    return str(dataset).strip().startswith(HF_PREFIX)


def _values(value) -> list[str]:
    """The non-empty values of a cell (a list cell: its items)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in items if v is not None and str(v) != ""]


def _grade(value, where: str) -> int:
    """An integer grade; anything else is an error (see the module doc)."""
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not number.is_integer():
        raise DataFormatError(f"{where}: label {value!r} is not an integer grade; evaluation takes graded integer "
                              "labels (0 = not relevant, >= 1 relevant): threshold or round the labels first (e.g. "
                              "label >= 0.5 -> 1)")
    return int(number)


def _score(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DataFormatError(f"{where}: score {value!r} is not a finite number (the score column ranks the "
                              "query's candidates; every row needs one)")
    return number


def labeled_rows(rows, roles: Mapping, label: str, duplicates: str = "error") -> tuple[Judgments, Ranking]:
    """(qrels, run) of (query, document, label[, score]) rows, grouped by query (raw values: ids or texts)."""
    qcol, dcol, lcol, scol = roles["query"], roles["document"], roles["label"], roles.get("score")
    scores = list(rows[scol]) if scol is not None else None
    qrels: Judgments = {}
    ranks: dict[str, dict[str, float]] = {}
    first_row: dict[tuple[str, str], int] = {}
    repeated = 0
    for i, (q, d, g) in enumerate(zip(rows[qcol], rows[dcol], rows[lcol])):
        query, doc = _values(q), _values(d)
        if not query or not doc:
            continue
        q, d = query[0], doc[0]
        if g is None:
            raise DataFormatError(f"{label}: row {i}: no label (column {lcol!r})")
        grade = _grade(g, f"{label}: row {i} (column {lcol!r})")
        judged, ranked = qrels.setdefault(q, {}), ranks.setdefault(q, {})
        if d in judged:
            if duplicates == "error":
                raise DataFormatError(f"{label}: row {i}: query {q[:80]!r}, document {d[:80]!r} is judged again "
                                      f"(first in row {first_row[(q, d)]}); set qrels_duplicates: last to keep the "
                                      "last row")
            repeated += 1
            del judged[d], ranked[d]  # the last row counts, at its own place in the row order
        first_row.setdefault((q, d), i)
        judged[d] = grade
        ranked[d] = _score(scores[i], f"{label}: row {i} (column {scol!r})") if scores is not None else 0.0
    if repeated:
        log.warning("%s: %d (query, document) pairs judged again; the last row counts", label, repeated)
    if scores is None:  # row order: the first row ranks first (scores n, n - 1, ..., 1)
        ranks = {q: {d: float(len(ranked) - r) for r, d in enumerate(ranked)} for q, ranked in ranks.items()}
    return qrels, ranks


def tuple_rows(rows, roles: Mapping, label: str) -> tuple[Judgments, Ranking]:
    """(qrels, run) of (query, positive, negatives...) rows, grouped by query; the candidates shuffled per query."""
    neg_columns = roles["negatives"] if isinstance(roles["negatives"], list) else [roles["negatives"]]
    qcol, pcol = roles["query"], roles["positive"]
    qrels: Judgments = {}
    candidates: dict[str, dict[str, None]] = {}
    for row in rows.select_columns([qcol, pcol, *neg_columns]):
        query = _values(row[qcol])
        if not query:
            continue
        q = query[0]
        judged, listed = qrels.setdefault(q, {}), candidates.setdefault(q, {})
        for p in _values(row[pcol]):
            judged[p] = 1
            listed[p] = None
        for n in (n for c in neg_columns for n in _values(row[c])):
            judged.setdefault(n, 0)
            listed[n] = None
    run: Ranking = {}
    for q, listed in candidates.items():
        docs = list(listed)
        random.Random(f"{SHUFFLE_SEED}:{q}").shuffle(docs)
        run[q] = {d: float(len(docs) - r) for r, d in enumerate(docs)}
    return qrels, run


def _ids(values: Iterable[str], prefix: str) -> dict[str, str]:
    """text -> ``<prefix><N>`` in order of first appearance."""
    return {v: f"{prefix}{n}" for n, v in enumerate(dict.fromkeys(values), 1)}


def _table(spec: Optional[str], split: str, columns: Mapping, kind: str, option: str):
    return load_texts(spec, split, columns, kind, option) if spec else TextIds()


def _check_tables(cols, queries: Optional[str], corpus: Optional[str], label: str) -> None:
    for kind, one, given, option in (("queries", "query", queries, "hf_queries"),
                                     ("documents", "document", corpus, "hf_corpus")):
        held = id_columns(cols)[kind]
        if held and not given:
            raise DataFormatError(f"{label}: column {held[0]!r} holds {one} ids, and nothing gives their texts: set "
                                  f"{option} (a table of ids and texts: ID:CONFIG or files)")


def default_name(source: HFSource, split: str) -> tuple[str, Optional[str]]:
    """(name, split) of a source: the hub ``ID[:CONFIG]`` or the folder with the split; the first file's stem."""
    if source.files:
        first = Path(source.files[0]).name
        suffix = next((s for s in sorted(BUILDERS, key=len, reverse=True) if first.lower().endswith(s)), "")
        return first[:len(first) - len(suffix)] or first, None
    if source.local:
        return Path(source.path).expanduser().resolve().name, split
    return source.label, split


def local_files(spec: str) -> list[Path]:
    """The local data files of ``spec`` (none for a hub dataset): what makes a run "the same" (eval_run)."""
    source = parse_source(spec, "dataset")
    if source.files:
        return [Path(f) for f in source.files]
    if not source.local:
        return []
    folder = Path(source.path).expanduser()
    return sorted(p for p in folder.rglob("*") if p.is_file() and any(p.name.lower().endswith(s) for s in BUILDERS))


def load_hf_eval(spec: str, *, split: str = "train", layout: str = "auto", columns: Optional[Mapping] = None,
                 queries: Optional[str] = None, corpus: Optional[str] = None, name: Optional[str] = None,
                 measures: Optional[Iterable[str]] = None, qrels_duplicates: str = "error") -> Dataset:
    """The evaluation :class:`Dataset` of a Hugging Face dataset ``spec`` (without ``hf:``); see the module doc."""
    if qrels_duplicates not in QRELS_DUPLICATES:
        raise ValueError(f"option 'qrels_duplicates' must be one of {', '.join(map(repr, QRELS_DUPLICATES))}")
    columns = dict(columns or {})
    source = parse_source(spec, "dataset")
    label = f"dataset hf:{source.label}" + ("" if source.files else f" (split {split})")
    if source.files and all(Path(f).expanduser().stat().st_size == 0 for f in source.files):
        raise DataFormatError(f"{label}: no rows (empty file{'s' if len(source.files) > 1 else ''})")
    try:
        rows = load_hf(source, split)
    except DataFormatError as exc:
        if "corresponds to no data" in str(exc):  # datasets' word for empty files
            raise DataFormatError(f"{label}: no rows") from None
        raise
    if len(rows) == 0:
        raise DataFormatError(f"{label}: no rows")
    cols = resolve_columns(column_names(rows), columns, layout, label)
    if cols.layout == "scored":
        raise DataFormatError(f"{label}: layout scored (query, documents, teacher scores) has no relevance labels to "
                              "evaluate against; evaluation reads layouts labeled and tuples (set hf_layout and map "
                              "the columns with hf_columns)")
    _check_tables(cols, queries, corpus, label)
    if cols.layout == "labeled":
        qrels, run = labeled_rows(rows, cols.roles, label, qrels_duplicates)
    else:
        qrels, run = tuple_rows(rows, cols.roles, label)
    relevant = [q for q, judged in qrels.items() if any(g >= RELEVANT for g in judged.values())]
    if not relevant:
        raise DataFormatError(f"{label}: no query has a relevant document (a label >= {RELEVANT}): nothing to "
                              f"evaluate ({len(qrels)} queries)")
    kept = set(relevant)
    skipped = [q for q in qrels if q not in kept]
    if skipped:
        log.warning("%s: %d queries without a relevant document (a label >= %d) are left out: %s", label,
                    len(skipped), RELEVANT, preview(q[:60] for q in skipped))
    qtable = _table(queries, split, columns, "queries", "hf_queries")
    dtable = _table(corpus, split, columns, "corpus", "hf_corpus")
    qids = _ids(relevant, "q") if isinstance(qtable, TextIds) else {q: q for q in relevant}
    query_texts = {qids[q]: t for q, t in qtable.get_many(relevant).items()}
    listed = list(dict.fromkeys(d for q in relevant for d in run[q]))
    dids = _ids(listed, "d") if isinstance(dtable, TextIds) else None
    did = (lambda d: dids[d]) if dids is not None else (lambda d: d)
    doc_texts = {did(d): t for d, t in dtable.get_many(listed).items()}
    final_qrels = {qids[q]: {did(d): g for d, g in qrels[q].items()} for q in relevant}
    final_run = {qids[q]: {did(d): s for d, s in run[q].items()} for q in relevant}

    base, split_of = default_name(source, split)
    name = name or base
    corpus_slug = slugify(name)
    slug = corpus_slug + (f"-{slugify(split_of)}" if split_of else "")
    irds = IrdsDataset(LocalDocs(lambda: (GenericDoc(d, t) for d, t in doc_texts.items()), GenericDoc),
                       LocalQueries(lambda: query_texts), LocalQrels(lambda: final_qrels),
                       LocalScoredDocs(lambda: final_run))
    import ir_datasets

    irds_id = register(slug, irds)
    log.info("%s: layout %s, %d queries, %d candidates", label, cols.layout, len(final_run),
             sum(len(c) for c in final_run.values()))
    return Dataset(name, ir_datasets.load(irds_id), irds_id, measures or HF_MEASURES, split=split_of, slug=slug,
                   corpus_slug=corpus_slug, source=f"{HF_PREFIX}{source.label}", kind="hf", has_candidates=True)


__all__ = ["HF_MEASURES", "HF_PREFIX", "SHUFFLE_SEED", "default_name", "is_hf", "labeled_rows", "load_hf_eval",
           "local_files", "tuple_rows"]
