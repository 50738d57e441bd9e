"""Training groups from a Hugging Face dataset (``source: hf``): rows -> groups for each layout, their texts, and
teacher scores from score columns. Loading and column roles are the data layer's (``maw_reranker/data/hf.py``).

Layouts (``hf_layout``, or told from the columns):

* ``tuples``: one row = a query, a positive (a value, or a list whose first item is used) and negatives (a list
  column, or ``negative_1`` ... ``negative_n``); optional ``positive_score`` + ``negative_scores`` (a list aligned
  with the negatives) are teacher scores. One group per row per epoch; ``num_negatives`` drawn from the row's
  negatives (``sampling_strategy``: random, or top = the first ones).
* ``scored``: one row = a query, document ids and their teacher scores (MS MARCO hard negatives scored by a
  cross-encoder, e.g. ``lightonai/ms-marco-en-bge``). The positive is the teacher's best document, the negatives
  are the others, best first (``top`` takes the hardest). For the distillation losses only: another loss is an
  error naming ``loss`` and ``hf_layout`` (it would train on the teacher's pick as if it were a label).
* ``labeled``: one row = (query, document, label[, score]); rows are grouped by query in memory, then exactly as
  the pool source: one group per (query, positive) per epoch, positives ``label >= relevance_threshold``, negatives
  ``label <= max_negative_grade``, ordered by the ``score`` column, best first (``sampling_strategy: top`` needs one).

Texts: when ``hf_queries`` / ``hf_corpus`` (or ``dataset``) give a queries / documents table, the rows hold ids
resolved through it; otherwise the rows hold the texts themselves, and a group's ids are those texts. A query or
document column under an id name (``data/hf.ID_COLUMNS``: ``query_id``, ``document_ids``, ...) without such a table
is an error. ``streaming`` reads the rows lazily (``tuples`` and ``scored``) through the trainer's bounded shuffle
buffer.

Cell types, checked as each row is read (an in-memory source: all before the model loads; a streamed one: its
first row then, the others as they come), each error naming the dataset, the row and the column: a query or document
column holds texts (strings) when the rows hold the texts, ids (strings or integers) when a table gives the texts;
a label is a finite number. Score columns: every score must be a finite number (not a string, not a bool). When a
distillation loss trains on them, every row needs its scores: an in-memory source is checked before the model loads,
a streamed one stops at the row; each error names the dataset, the row and the column. They are the only teacher: ``teacher_run`` /
``teacher_model`` with score columns is an error naming both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from maw_reranker.data.hf import (TextIds, column_names, id_columns, load_hf, load_texts, parse_source,
                                  resolve_columns)
from maw_reranker.data.readers import DataFormatError
from maw_reranker.train.data import Group, PoolGroups, sample_negatives, shuffle_stream
from maw_reranker.train.losses import DISTILLATION_LOSSES
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


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _values(value, where: str, column, ids: bool = False, many: bool = True) -> list[str]:
    """The items of a query or document cell (a value, or with ``many`` a list; nulls and empty strings dropped) as
    strings. Texts must be strings, ids (``ids``) strings or integers: anything else (a dict, a float, a bool, an
    integer as a text) is an error naming ``where`` (the dataset and row) and ``column``."""
    if many and isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]
    out = []
    for v in items:
        if v is None or v == "":
            continue
        if not (isinstance(v, str) or (ids and isinstance(v, int) and not isinstance(v, bool))):
            kind = "ids (strings or integers)" if ids else "texts (strings)"
            raise DataFormatError(f"{where}: column {column!r} holds {kind}, got {_shown(v)} ({type(v).__name__})")
        out.append(str(v))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _floats(value, where: str, column) -> Optional[list[float]]:
    """The number(s) of a score cell (None for a null cell); not a number (a string, a bool), or nan / inf, is an
    error naming ``where`` (the dataset and row) and ``column``."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(_is_number(v) for v in items):
        raise DataFormatError(f"{where}: teacher scores must be numbers, got {_shown(value)} (column {column!r})")
    numbers = [float(v) for v in items]
    if not all(math.isfinite(v) for v in numbers):
        raise DataFormatError(f"{where}: teacher scores must be finite, got {value!r} (column {column!r})")
    return numbers


def _no_score(where: str, column, required: str) -> DataFormatError:
    return DataFormatError(f"{where}: no teacher score in column {column!r}, which {required} needs on every row; "
                           "fill or drop the row")


def tuple_converter(roles: Mapping, label: str, required: Optional[str] = None,
                    ids: Optional[Mapping[str, bool]] = None) -> Callable[[Mapping, int], Optional[RowCandidates]]:
    """Rows of layout ``tuples`` -> candidates. ``required`` (why the score columns are needed, e.g. ``loss
    margin_mse``) makes a row with a null score an error naming the row and the column. ``ids``: ``queries`` /
    ``documents`` -> whether those columns hold ids (a table gives the texts) rather than texts."""
    qids, dids = bool((ids or {}).get("queries")), bool((ids or {}).get("documents"))
    neg_columns = roles["negatives"] if isinstance(roles["negatives"], list) else [roles["negatives"]]
    pos_score, neg_scores = roles.get("positive_score"), roles.get("negative_scores")
    if (pos_score is None) != (neg_scores is None):
        raise DataFormatError(f"{label}: teacher scores need both a positive_score and a negative_scores column "
                              f"(found only {pos_score or neg_scores!r}); map them with hf_columns")

    def convert(row: Mapping, i: int) -> Optional[RowCandidates]:
        where = f"{label}: row {i}"
        query = _values(row[roles["query"]], where, roles["query"], qids)
        positives = _values(row[roles["positive"]], where, roles["positive"], dids)
        negatives = [n for c in neg_columns for n in _values(row[c], where, c, dids)]
        if not query or not positives or not negatives:
            return None
        if pos_score is None:
            return RowCandidates(query[0], positives[0], tuple(negatives))
        ps, ns = _floats(row[pos_score], where, pos_score), _floats(row[neg_scores], where, neg_scores)
        if required and not ps:
            raise _no_score(where, pos_score, required)
        if required and ns is None:
            raise _no_score(where, neg_scores, required)
        if ns is not None and len(ns) != len(negatives):
            raise DataFormatError(f"{where}: {len(negatives)} negatives but {len(ns)} negative scores (column "
                                  f"{neg_scores!r})")
        return RowCandidates(query[0], positives[0], tuple(negatives), ps[0] if ps else None,
                             tuple(ns) if ns is not None else None)

    return convert


def scored_converter(roles: Mapping, label: str, required: Optional[str] = None,
                     ids: Optional[Mapping[str, bool]] = None) -> Callable[[Mapping, int], Optional[RowCandidates]]:
    qids, dids = bool((ids or {}).get("queries")), bool((ids or {}).get("documents"))

    def convert(row: Mapping, i: int) -> Optional[RowCandidates]:
        where = f"{label}: row {i}"
        query = _values(row[roles["query"]], where, roles["query"], qids)
        docs = _values(row[roles["documents"]], where, roles["documents"], dids)
        scores = _floats(row[roles["scores"]], where, roles["scores"])
        if scores is None:
            if required or docs:
                raise _no_score(where, roles["scores"], required or "layout scored")
            scores = []
        if len(docs) != len(scores):
            raise DataFormatError(f"{where}: {len(docs)} documents but {len(scores)} scores (columns "
                                  f"{roles['documents']!r}, {roles['scores']!r})")
        if not query or len(docs) < 2:
            return None
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return RowCandidates(query[0], docs[order[0]], tuple(docs[j] for j in order[1:]), scores[order[0]],
                             tuple(scores[j] for j in order[1:]))

    return convert


def row_group(c: RowCandidates, num_negatives: int, sampling: str, rng: np.random.Generator) -> Group:
    idx = sample_negatives(list(range(len(c.negs))), num_negatives, sampling, rng)
    teacher = None
    if c.pos_score is not None and c.neg_scores is not None:
        teacher = (c.pos_score, *(c.neg_scores[j] for j in idx))
    return Group(c.qid, c.pos, tuple(c.negs[j] for j in idx), teacher)


class RowGroups:
    """In-memory rows (one group each per epoch, in a fresh order with fresh negatives)."""

    streaming = False

    def __init__(self, items: list[RowCandidates], num_negatives: int, sampling: str = "random", seed: int = 0):
        self.items, self.num_negatives, self.sampling, self.seed = items, num_negatives, sampling, seed

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
            yield row_group(self.items[i], self.num_negatives, self.sampling, rng)


class StreamingRowGroups:
    """Rows read lazily each epoch (``datasets`` IterableDataset) through a bounded shuffle buffer."""

    streaming = True

    def __init__(self, rows: Callable[[], Iterator[Mapping]], convert, num_negatives: int, sampling: str = "random",
                 seed: int = 0, buffer: int = 10000):
        self.rows, self.convert, self.num_negatives = rows, convert, num_negatives
        self.sampling, self.seed, self.buffer = sampling, seed, buffer

    def __len__(self) -> int:
        raise TypeError("a streaming source has no length")

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])

        def groups():
            for i, row in enumerate(self.rows()):
                c = self.convert(row, i)
                if c is not None:
                    yield row_group(c, self.num_negatives, self.sampling, rng)

        return shuffle_stream(groups(), self.buffer, rng)


def _texts(opts):
    """(queries, docs) mappings: the hf_queries / hf_corpus tables, else the ``dataset``'s, else the texts."""
    ds = None
    if str(opts.dataset).strip() and not (opts.hf_queries and opts.hf_corpus):
        from maw_reranker.config.sections import dataset_from_options

        ds = dataset_from_options(opts)
    def table(spec, role: str, option: str, from_dataset):
        if spec:
            return load_texts(spec, opts.hf_split, opts.hf_columns, role, option), f"{option} {spec}"
        if ds is not None:
            return from_dataset(), f"dataset {ds.name}"
        return TextIds(), "the rows (texts)"

    queries, qfrom = table(opts.hf_queries, "queries", "hf_queries", lambda: ds.queries())
    docs, dfrom = table(opts.hf_corpus, "corpus", "hf_corpus", lambda: ds.docs())
    return queries, docs, {"queries_from": qfrom, "documents_from": dfrom}


def _labeled(rows, roles: Mapping, opts, label: str, required: Optional[str] = None,
             ids: Optional[Mapping[str, bool]] = None):
    """(PoolGroups, {qid: {docid: teacher score}} or None) from (query, document, label[, score]) rows. With a score
    column each query's negatives are ordered by it, best first (what ``sampling_strategy: top`` takes); ``required``
    (why the scores are needed) makes a row without a score an error naming the row and the column. ``ids`` as for
    :func:`tuple_converter`."""
    qids, dids = bool((ids or {}).get("queries")), bool((ids or {}).get("documents"))
    queries = rows[roles["query"]]
    docs = rows[roles["document"]]
    labels = rows[roles["label"]]
    score_column = roles.get("score")
    scores = list(rows[score_column]) if score_column is not None else None
    judged: dict[str, dict[str, float]] = {}
    teacher: dict[str, dict[str, float]] = {}
    duplicates = 0
    for i, (q, d, g) in enumerate(zip(queries, docs, labels)):
        where = f"{label}: row {i}"
        q = _values(q, where, roles["query"], qids, many=False)
        d = _values(d, where, roles["document"], dids, many=False)
        if not q or not d or g is None:
            continue
        try:
            grade = float(g)
        except (TypeError, ValueError):
            raise DataFormatError(f"{where}: label must be a number, got {_shown(g)} (column {roles['label']!r})"
                                  ) from None
        if not math.isfinite(grade):
            raise DataFormatError(f"{where}: label must be a finite number, got {_shown(g)} (column "
                                  f"{roles['label']!r})")
        q, d = q[0], d[0]
        duplicates += d in judged.setdefault(q, {})
        judged[q][d] = grade
        if scores is not None:
            value = _floats(scores[i], f"{label}: row {i}", score_column)
            if value:
                teacher.setdefault(q, {})[d] = value[0]
            elif required:
                raise _no_score(f"{label}: row {i}", score_column, required)
            else:
                teacher.get(q, {}).pop(d, None)  # a repeated row without a score: the last one counts
    if duplicates:
        log.warning("%s: %d repeated (query, document) rows; the last one counts", label, duplicates)
    positives = {q: sorted(d for d, g in j.items() if g >= opts.relevance_threshold) for q, j in judged.items()}
    windows = {q: [d for d, g in j.items() if g <= opts.max_negative_grade] for q, j in judged.items()}
    if scores is not None:  # best first by the score column (stable: ties keep the row order); unscored last
        for q, window in windows.items():
            scored = teacher.get(q, {})
            window.sort(key=lambda d: (d not in scored, -scored.get(d, 0.0)))
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
    source = PoolGroups({q: positives[q] for q in usable}, {q: windows[q] for q in usable}, opts.num_negatives,
                        opts.sampling_strategy, opts.seed)
    return source, (teacher if scores is not None else None), {"queries": len(judged), "skipped_queries": len(skipped)}


def _check_layout(opts, columns, score_columns: list, label: str) -> Optional[str]:
    """The checks of options against the resolved columns, before any text table or row is read. Returns why every
    row needs its score (a distillation loss on the score columns, or ``sampling_strategy: top`` of layout labeled), or
    None."""
    layout = columns.layout
    distill = opts.loss in DISTILLATION_LOSSES
    if layout == "scored" and not distill:
        raise TrainingDataError(f"{label}: hf_layout scored makes the teacher's best document the positive, a target "
                                f"only the distillation losses ({', '.join(DISTILLATION_LOSSES)}) train on; got loss: "
                                f"{opts.loss}; set loss: margin_mse or listwise_kl, or give relevance labels (layout "
                                "tuples or labeled)")
    teacher_option = next((n for n in ("teacher_run", "teacher_model") if getattr(opts, n, None)), None)
    if teacher_option and score_columns:
        raise TrainingDataError(f"{label}: option '{teacher_option}' and the score column"
                                f"{'s' if len(score_columns) > 1 else ''} {', '.join(map(repr, score_columns))} both "
                                "give teacher scores; teacher scores come from exactly one place: leave out "
                                f"{teacher_option} to train on the columns, or use data without score columns")
    for kind, one, option in (("queries", "query", "hf_queries"), ("documents", "document", "hf_corpus")):
        held = id_columns(columns)[kind]
        if held and not getattr(opts, option) and not str(opts.dataset).strip():
            raise TrainingDataError(f"{label}: column {held[0]!r} holds {one} ids, and nothing gives their "
                                    f"texts: set {option} (a table of ids and texts: ID:CONFIG or files) or dataset "
                                    f"(whose {kind} have these ids)")
    if layout == "labeled" and opts.sampling_strategy == "top" and "score" not in columns.roles:
        raise TrainingDataError(f"{label}: sampling_strategy: top takes each query's best-ranked negatives, and layout "
                                "labeled ranks them only by a score column (none found: map one with hf_columns: "
                                "{score: COLUMN}); set sampling_strategy: random")
    if distill and score_columns:
        return f"loss {opts.loss}"
    if layout == "labeled" and opts.sampling_strategy == "top":
        return "sampling_strategy: top (it orders the negatives)"
    return None


def load_hf_training(opts, main_first) -> TrainingData:
    """Training groups, texts, teacher scores (score columns) and the dev set of ``source: hf`` options."""
    try:
        source = parse_source(opts.hf_dataset, "hf_dataset")
        with main_first():  # one process downloads and prepares the Arrow cache, the others then read it
            rows = load_hf(source, opts.hf_split, streaming=opts.streaming)
    except (ValueError, FileNotFoundError) as exc:
        if str(exc).startswith("option 'hf_dataset'"):
            raise
        raise with_context(exc, "option 'hf_dataset'") from None
    label = f"hf_dataset {source.label}"
    columns = resolve_columns(column_names(rows), opts.hf_columns, opts.hf_layout, label)
    roles = columns.roles
    score_columns = [roles[r] for r in ("positive_score", "negative_scores", "scores", "score") if r in roles]
    required = _check_layout(opts, columns, score_columns, label)
    queries, docs, texts_from = _texts(opts)
    ids = {"queries": not isinstance(queries, TextIds), "documents": not isinstance(docs, TextIds)}
    description = {"dataset": source.label, "split": opts.hf_split, "source": "hf", "layout": columns.layout,
                   "columns": roles, "streaming": opts.streaming, "num_negatives": opts.num_negatives,
                   "sampling": opts.sampling_strategy, **texts_from}
    origin = f"score column{'s' if len(score_columns) > 1 else ''} {', '.join(map(repr, score_columns))} of {label}"
    teacher_info = {"source": "hf column", "columns": score_columns}
    teacher = None
    if columns.layout == "labeled":
        if opts.streaming:
            raise TrainingDataError(f"{label}: layout labeled groups its rows by query in memory; set streaming: "
                                    "false (or use a tuples / scored layout to stream)")
        group_source, teacher_map, counts = _labeled(rows, roles, opts, label, required, ids)
        description.update(counts)
        if teacher_map is not None:
            teacher = TeacherScores(teacher_map, origin, teacher_info)
    else:
        convert = (tuple_converter if columns.layout == "tuples" else scored_converter)(roles, label, required, ids)
        if score_columns:
            teacher = TeacherScores({}, origin, teacher_info)
        if opts.streaming:
            convert(next(iter(rows)), 0)  # its first row's cells, before training (the others as they are read)
            group_source = StreamingRowGroups(lambda: iter(rows), convert, opts.num_negatives, opts.sampling_strategy,
                                              opts.seed, opts.shuffle_buffer)
        else:
            items = [c for i, row in enumerate(rows) if (c := convert(row, i)) is not None]
            if not items:
                raise TrainingDataError(f"{label}: no row has a query, a positive and a negative")
            short = sum(1 for c in items if len(c.negs) < opts.num_negatives)
            if short:
                log.warning("%s: %d of %d rows have fewer than num_negatives=%d negatives; their negatives repeat "
                            "(lower num_negatives, e.g. 1 for triplets)", label, short, len(items), opts.num_negatives)
            description.update(rows=len(rows), skipped_rows=len(rows) - len(items), short_rows=short)
            group_source = RowGroups(items, opts.num_negatives, opts.sampling_strategy, opts.seed)
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
