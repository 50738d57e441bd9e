"""The one dataset interface the package uses, over any ir_datasets dataset (official or registered locally)."""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import Iterable, Iterator, Mapping

from maw_reranker.data.measures import check_measures
from maw_reranker.utils.errors import network_reason
from maw_reranker.utils.text import slugify as _slugify

Run = dict[str, dict[str, float]]


def doc_text(doc) -> str:
    """Text to index and rerank: ``"title text"`` when the doc has a title (BEIR; as Anserini's BeirFlatCollection)."""
    text = getattr(doc, "text", None)
    if text is None:
        return doc.default_text()
    title = getattr(doc, "title", None)
    return f"{title} {text}".strip() if title else text


def query_text(query) -> str:
    # BEIR TREC-COVID/SCIDOCS queries carry extra fields; the benchmark query is always ``text``.
    text = getattr(query, "text", None)
    return text if text is not None else query.default_text()


def slugify(name: str) -> str:
    return _slugify(name, empty="dataset")


def fetch_texts(docs: Mapping[str, str], docids: Iterable[str]) -> dict[str, str]:
    """Texts of the docids found in ``docs`` (a :class:`DocsMapping` or a plain mapping), missing ones left out;
    one batched docstore pass when the mapping offers ``get_many``."""
    docids = list(dict.fromkeys(docids))
    if hasattr(docs, "get_many"):
        return dict(docs.get_many(docids))
    found = {}
    for docid in docids:
        try:
            found[docid] = docs[docid]
        except KeyError:
            pass
    return found


class DatasetDownloadError(FileNotFoundError):
    """A named dataset is neither in the ir_datasets cache nor downloadable (typically: offline)."""


@contextlib.contextmanager
def _download_errors(name: str, irds_id: str, enabled: bool):
    """Turn ir_datasets' network tracebacks into one line that says what failed and what to do instead."""
    try:
        yield
    except DatasetDownloadError:
        raise
    except OSError as exc:
        if not enabled:
            raise
        reason = network_reason(exc)
        raise DatasetDownloadError(
            f"dataset {name!r} ({irds_id}) is not in the ir_datasets cache (~/.ir_datasets or $IR_DATASETS_HOME) "
            f"and could not be downloaded: {reason}. Offline? Use a local copy instead, e.g. a BEIR folder path "
            f"as the dataset (see `maw-rerank datasets`).") from None


class DocsMapping(Mapping):
    """docid -> text, backed by the dataset's ir_datasets docs_store (lazy: nothing is loaded until asked)."""

    def __init__(self, irds, guard=contextlib.nullcontext):
        self._irds = irds
        self._guard = guard

    @cached_property
    def _store(self):
        with self._guard():
            return self._irds.docs_store()

    def __getitem__(self, docid: str) -> str:
        with self._guard():
            found = self._store.get_many([docid])
        if docid not in found:
            raise KeyError(docid)
        return doc_text(found[docid])

    def get_many(self, docids: Iterable[str]) -> dict[str, str]:
        """Batch lookup (one docstore pass); missing ids are left out."""
        with self._guard():
            return {docid: doc_text(doc) for docid, doc in self._store.get_many(list(docids)).items()}

    def __iter__(self) -> Iterator[str]:
        with self._guard():
            for doc in self._irds.docs_iter():
                yield doc.doc_id

    def __len__(self) -> int:
        with self._guard():
            count = self._irds.docs_count()
        return count if count is not None else sum(1 for _ in self)


class Dataset:
    """A named dataset: queries, qrels, documents, and (for candidate files) the run that ships with it.

    ``slug`` names its pool folder; ``corpus_slug`` names artifacts shared by all splits (indexes).
    """

    def __init__(self, name: str, irds, irds_id: str, measures: Iterable[str], *, split: str | None = None,
                 slug: str | None = None, corpus_slug: str | None = None, source: str | None = None,
                 kind: str = "registry", remove_query: bool = False, pyserini_index: str | None = None,
                 has_candidates: bool = False):
        self.name = name
        self.irds = irds
        self.irds_id = irds_id
        self.measures = check_measures(measures)
        self.split = split
        self.corpus_slug = corpus_slug or slugify(name)
        self.slug = slug or self.corpus_slug + (f"-{split}" if split else "")
        self.source = source or irds_id
        self.kind = kind
        self.remove_query = remove_query
        self.pyserini_index = pyserini_index
        self._has_candidates = has_candidates

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"Dataset({self.name!r}{split}, source={self.source!r}, measures={self.measures})"

    def _guard(self):
        return _download_errors(self.name, self.irds_id, self.kind == "registry")

    def queries(self) -> dict[str, str]:
        with self._guard():
            return {q.query_id: query_text(q) for q in self.irds.queries_iter()}

    def qrels(self) -> dict[str, dict[str, int]]:
        if not self.irds.has_qrels():
            return {}
        qrels: dict[str, dict[str, int]] = {}
        with self._guard():
            for qrel in self.irds.qrels_iter():
                qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
        return qrels

    def docs(self) -> DocsMapping:
        return DocsMapping(self.irds, self._guard)

    def iter_docs(self) -> Iterator[tuple[str, str]]:
        with self._guard():
            for doc in self.irds.docs_iter():
                yield doc.doc_id, doc_text(doc)

    def docs_count(self) -> int | None:
        with self._guard():
            return self.irds.docs_count()

    def candidates(self) -> Run | None:
        """The run shipped with a candidates file (RankLLM JSON, TREC run + docs); None otherwise."""
        if not self._has_candidates:
            return None
        run: Run = {}
        for sd in self.irds.scoreddocs_iter():
            run.setdefault(sd.query_id, {})[sd.doc_id] = float(sd.score)
        return run
