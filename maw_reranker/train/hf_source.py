"""Training groups from a Hugging Face dataset (``source: hf``): rows -> groups for each layout, their texts, and
teacher scores from score columns. Loading and column roles are the data layer's (``maw_reranker/data/hf.py``).

Layouts (``hf_layout``, or told from the columns):

* ``tuples``: one row = a query, a positive (a value, or a list whose first item is used) and negatives (a list
  column, or ``negative_1`` ... ``negative_n``); optional ``positive_score`` + ``negative_scores`` (a list aligned
  with the negatives) are teacher scores. One group per row per epoch; ``n_negatives`` drawn from the row's
  negatives (``neg_sampling``: random, or top = the first ones).
* ``scored``: one row = a query, document ids and their teacher scores (MS MARCO hard negatives scored by a
  cross-encoder, e.g. ``lightonai/ms-marco-en-bge``). The positive is the teacher's best document, the negatives
  are the others, best first (``top`` takes the hardest). Meant for the distillation losses.
* ``labeled``: one row = (query, document, label[, score]); rows are grouped by query in memory, then exactly as
  the pool source: one group per (query, positive) per epoch, positives ``label >= relevance_threshold``, negatives
  ``label <= max_negative_grade``.

Texts: when ``hf_queries`` / ``hf_corpus`` (or ``dataset``) give a queries / documents table, the rows hold ids
resolved through it; otherwise the rows hold the texts themselves, and a group's ids are those texts. ``streaming``
reads the rows lazily (``tuples`` and ``scored``) through the trainer's bounded shuffle buffer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from maw_reranker.data.hf import TextIds, column_names, load_hf, load_texts, parse_source, resolve_columns
from maw_reranker.data.readers import DataFormatError
from maw_reranker.train.data import Group, PoolGroups, sample_negatives, shuffle_stream
from maw_reranker.train.sources import TrainingData, TrainingDataError, _check_docs, _dev_set
from maw_reranker.train.teacher import TeacherScores
from maw_reranker.utils.errors import with_context
from maw_reranker.utils.text import preview

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowCandidates:
    """What one row gives: the query, its positive, its negatives (best first when known), teacher scores if any."""

    qid: str
    pos: str
    negs: tuple[str, ...]
    pos_score: Optional[float] = None
    neg_scores: Optional[tuple[float, ...]] = None


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)] if str(value) != "" else []


def _floats(value, where: str) -> Optional[list[float]]:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: teacher scores must be numbers, got {value!r}") from None


def tuple_converter(roles: Mapping, label: str) -> Callable[[Mapping, int], Optional[RowCandidates]]:
    neg_columns = roles["negatives"] if isinstance(roles["negatives"], list) else [roles["negatives"]]
    pos_score, neg_scores = roles.get("positive_score"), roles.get("negative_scores")
    if (pos_score is None) != (neg_scores is None):
        raise DataFormatError(f"{label}: teacher scores need both a positive_score and a negative_scores column "
                              f"(found only {pos_score or neg_scores!r}); map them with hf_columns")

    def convert(row: Mapping, i: int) -> Optional[RowCandidates]:
        query = _values(row[roles["query"]])
        positives = _values(row[roles["positive"]])
        negatives = [n for c in neg_columns for n in _values(row[c])]
        if not query or not positives or not negatives:
            return None
        if pos_score is None:
            return RowCandidates(query[0], positives[0], tuple(negatives))
        where = f"{label}: row {i}"
        ps, ns = _floats(row[pos_score], where), _floats(row[neg_scores], where)
        if ns is not None and len(ns) != len(negatives):
            raise DataFormatError(f"{where}: {len(negatives)} negatives but {len(ns)} negative scores (column "
                                  f"{neg_scores!r})")
        return RowCandidates(query[0], positives[0], tuple(negatives), ps[0] if ps else None,
                             tuple(ns) if ns is not None else None)

    return convert


def scored_converter(roles: Mapping, label: str) -> Callable[[Mapping, int], Optional[RowCandidates]]:
    def convert(row: Mapping, i: int) -> Optional[RowCandidates]:
        query = _values(row[roles["query"]])
        docs = _values(row[roles["documents"]])
        scores = _floats(row[roles["scores"]], f"{label}: row {i}") or []
        if len(docs) != len(scores):
            raise DataFormatError(f"{label}: row {i}: {len(docs)} documents but {len(scores)} scores (columns "
                                  f"{roles['documents']!r}, {roles['scores']!r})")
        if not query or len(docs) < 2:
            return None
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return RowCandidates(query[0], docs[order[0]], tuple(docs[j] for j in order[1:]), scores[order[0]],
                             tuple(scores[j] for j in order[1:]))

    return convert


def row_group(c: RowCandidates, n_negatives: int, sampling: str, rng: np.random.Generator) -> Group:
    idx = sample_negatives(list(range(len(c.negs))), n_negatives, sampling, rng)
    teacher = None
    if c.pos_score is not None and c.neg_scores is not None:
        teacher = (c.pos_score, *(c.neg_scores[j] for j in idx))
    return Group(c.qid, c.pos, tuple(c.negs[j] for j in idx), teacher)


class RowGroups:
    """In-memory rows (one group each per epoch, in a fresh order with fresh negatives)."""

    streaming = False

    def __init__(self, items: list[RowCandidates], n_negatives: int, sampling: str = "random", seed: int = 0):
        self.items, self.n_negatives, self.sampling, self.seed = items, n_negatives, sampling, seed

    def __len__(self) -> int:
        return len(self.items)

    def pairs(self) -> Iterator[tuple[str, str]]:
        seen: set = set()
        for c in self.items:
            for docid in (c.pos, *c.negs):
                if (c.qid, docid) not in seen:
                    seen.add((c.qid, docid))
                    yield c.qid, docid

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])
        for i in rng.permutation(len(self.items)):
            yield row_group(self.items[i], self.n_negatives, self.sampling, rng)


class StreamingRowGroups:
    """Rows read lazily each epoch (``datasets`` IterableDataset) through a bounded shuffle buffer."""

    streaming = True

    def __init__(self, rows: Callable[[], Iterator[Mapping]], convert, n_negatives: int, sampling: str = "random",
                 seed: int = 0, buffer: int = 10000):
        self.rows, self.convert, self.n_negatives = rows, convert, n_negatives
        self.sampling, self.seed, self.buffer = sampling, seed, buffer

    def __len__(self) -> int:
        raise TypeError("a streaming source has no length")

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])

        def groups():
            for i, row in enumerate(self.rows()):
                c = self.convert(row, i)
                if c is not None:
                    yield row_group(c, self.n_negatives, self.sampling, rng)

        return shuffle_stream(groups(), self.buffer, rng)


def _texts(opts):
    """(queries, docs) mappings: the hf_queries / hf_corpus tables, else the ``dataset``'s, else the texts."""
    ds = None
    if str(opts.dataset).strip() and not (opts.hf_queries and opts.hf_corpus):
        from maw_reranker.config.sections import dataset_from_options

        ds = dataset_from_options(opts)
    if opts.hf_queries:
        queries, qfrom = load_texts(opts.hf_queries, opts.hf_split, opts.hf_columns, "queries", "hf_queries"), \
            f"hf_queries {opts.hf_queries}"
    elif ds is not None:
        queries, qfrom = ds.queries(), f"dataset {ds.name}"
    else:
        queries, qfrom = TextIds(), "the rows (texts)"
    if opts.hf_corpus:
        docs, dfrom = load_texts(opts.hf_corpus, opts.hf_split, opts.hf_columns, "corpus", "hf_corpus"), \
            f"hf_corpus {opts.hf_corpus}"
    elif ds is not None:
        docs, dfrom = ds.docs(), f"dataset {ds.name}"
    else:
        docs, dfrom = TextIds(), "the rows (texts)"
    return queries, docs, {"queries_from": qfrom, "documents_from": dfrom}


def _labeled(rows, roles: Mapping, opts, label: str):
    """(PoolGroups, {qid: {docid: teacher score}} or None) from (query, document, label[, score]) rows."""
    queries = rows[roles["query"]]
    docs = rows[roles["document"]]
    labels = rows[roles["label"]]
    scores = list(rows[roles["score"]]) if "score" in roles else None
    judged: dict[str, dict[str, float]] = {}
    teacher: dict[str, dict[str, float]] = {}
    duplicates = 0
    for i, (q, d, g) in enumerate(zip(queries, docs, labels)):
        if q is None or d is None or g is None:
            continue
        try:
            grade = float(g)
        except (TypeError, ValueError):
            raise DataFormatError(f"{label}: row {i}: label must be a number, got {g!r}") from None
        q, d = str(q), str(d)
        duplicates += d in judged.setdefault(q, {})
        judged[q][d] = grade
        if scores is not None and scores[i] is not None:
            teacher.setdefault(q, {})[d] = _floats(scores[i], f"{label}: row {i}")[0]
    if duplicates:
        log.warning("%s: %d repeated (query, document) rows; the last one counts", label, duplicates)
    positives = {q: sorted(d for d, g in j.items() if g >= opts.relevance_threshold) for q, j in judged.items()}
    windows = {q: [d for d, g in j.items() if g <= opts.max_negative_grade] for q, j in judged.items()}
    if not any(positives.values()):
        raise TrainingDataError(f"{label}: no row has a label >= relevance_threshold={opts.relevance_threshold}: "
                                "no positive to train on")
    usable = {q for q in judged if positives[q] and windows[q]}
    if not usable:
        raise TrainingDataError(f"{label}: no query has both a positive and a negative (label <= "
                                f"max_negative_grade={opts.max_negative_grade})")
    skipped = sorted(set(judged) - usable)
    if skipped:
        log.warning("%s: %d queries without a positive or a negative are skipped (e.g. %s)", label, len(skipped),
                    preview(skipped))
    source = PoolGroups({q: positives[q] for q in usable}, {q: windows[q] for q in usable}, opts.n_negatives,
                        opts.neg_sampling, opts.seed)
    return source, (teacher if scores is not None else None), {"queries": len(judged), "skipped_queries": len(skipped)}


def load_hf_training(opts, main_first) -> TrainingData:
    """Training groups, texts, teacher scores (score columns) and the dev set of ``source: hf`` options."""
    try:
        source = parse_source(opts.hf_dataset, "hf_dataset")
        with main_first():  # one process downloads and prepares the Arrow cache, the others then read it
            rows = load_hf(source, opts.hf_split, streaming=opts.streaming)
    except (ValueError, FileNotFoundError) as exc:
        raise with_context(exc, "option 'hf_dataset'") from None
    label = f"hf_dataset {source.label}"
    columns = resolve_columns(column_names(rows), opts.hf_columns, opts.hf_layout, label)
    roles = columns.roles
    queries, docs, texts_from = _texts(opts)
    description = {"dataset": source.label, "split": opts.hf_split, "source": "hf", "layout": columns.layout,
                   "columns": roles, "streaming": opts.streaming, "n_negatives": opts.n_negatives,
                   "sampling": opts.neg_sampling, **texts_from}
    score_columns = [roles[r] for r in ("positive_score", "negative_scores", "scores", "score") if r in roles]
    origin = f"score column{'s' if len(score_columns) > 1 else ''} {', '.join(map(repr, score_columns))} of {label}"
    teacher_info = {"source": "hf column", "columns": score_columns}
    teacher = None
    if columns.layout == "labeled":
        if opts.streaming:
            raise TrainingDataError(f"{label}: layout labeled groups its rows by query in memory; set streaming: "
                                    "false (or use a tuples / scored layout to stream)")
        group_source, teacher_map, counts = _labeled(rows, roles, opts, label)
        description.update(counts)
        if teacher_map is not None:
            teacher = TeacherScores(teacher_map, origin, teacher_info)
    else:
        convert = (tuple_converter if columns.layout == "tuples" else scored_converter)(roles, label)
        if score_columns:
            teacher = TeacherScores({}, origin, teacher_info)
        if opts.streaming:
            group_source = StreamingRowGroups(lambda: iter(rows), convert, opts.n_negatives, opts.neg_sampling,
                                              opts.seed, opts.shuffle_buffer)
        else:
            items = [c for i, row in enumerate(rows) if (c := convert(row, i)) is not None]
            if not items:
                raise TrainingDataError(f"{label}: no row has a query, a positive and a negative")
            short = sum(1 for c in items if len(c.negs) < opts.n_negatives)
            if short:
                log.warning("%s: %d of %d rows have fewer than n_negatives=%d negatives; their negatives repeat "
                            "(lower n_negatives, e.g. 1 for triplets)", label, short, len(items), opts.n_negatives)
            description.update(rows=len(rows), skipped_rows=len(rows) - len(items), short_rows=short)
            group_source = RowGroups(items, opts.n_negatives, opts.neg_sampling, opts.seed)
    if not group_source.streaming:
        pairs = list(group_source.pairs())
        qids = {q for q, _ in pairs}
        if not isinstance(queries, TextIds):
            no_text = sorted(q for q in qids if q not in queries)
            if no_text:
                raise TrainingDataError(f"{label}: {len(no_text)} query ids have no text in "
                                        f"{texts_from['queries_from']}: {preview(no_text)}")
        if not isinstance(docs, TextIds):
            _check_docs(docs, {d for _, d in pairs}, f"documents of {label} (looked up in "
                                                     f"{texts_from['documents_from']})")
        description.update(training_queries=len(qids), groups_per_epoch=len(group_source))
    return TrainingData(group_source, queries, docs, description, _dev_set(opts, main_first), teacher)
