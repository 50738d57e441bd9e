"""Local datasets as ir_datasets datasets (``ir_datasets.load("maw-local/<name>")`` works once loaded).

Layouts: a BEIR folder; docs TSV/JSONL + queries + TREC qrels (+ a TREC run as candidates); a RankLLM
candidates JSON whose hits carry the passage texts. Components parse lazily and strictly (errors name
file and line); docs live in memory once looked up, which suits the local corpora this is meant for.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import ir_datasets
from ir_datasets.datasets.base import Dataset as IrdsDataset
from ir_datasets.datasets.beir import BeirTitleDoc
from ir_datasets.formats import (
    BaseDocs,
    BaseQrels,
    BaseQueries,
    BaseScoredDocs,
    GenericDoc,
    GenericQuery,
    GenericScoredDoc,
    TrecQrel,
)

from maw_reranker.data.readers import DataFormatError, iter_records, read_queries, read_rankllm_candidates, require_file
from maw_reranker.data.trec import read_qrels, read_run

NAMESPACE = "maw-local"
_GENERIC_STEMS = {"docs", "corpus", "collection", "passages", "documents"}


class _MemoryDocstore:
    """The subset of ir_datasets' Docstore API the package uses (get, get_many, get_many_iter)."""

    def __init__(self, docs: dict):
        self._docs = docs

    def get(self, doc_id, field=None):
        doc = self._docs[doc_id]
        return doc if field is None else getattr(doc, field)

    def get_many(self, doc_ids, field=None):
        found = {d: self._docs[d] for d in doc_ids if d in self._docs}
        return found if field is None else {d: getattr(doc, field) for d, doc in found.items()}

    def get_many_iter(self, doc_ids):
        return (self._docs[d] for d in doc_ids if d in self._docs)


class LocalDocs(BaseDocs):
    def __init__(self, iter_fn: Callable[[], Iterator], doc_cls):
        self._iter_fn = iter_fn
        self._cls = doc_cls

    def docs_iter(self):
        return self._iter_fn()

    @cached_property
    def _store(self):
        return _MemoryDocstore({doc.doc_id: doc for doc in self._iter_fn()})

    def docs_store(self, field="doc_id"):
        return self._store

    def docs_count(self):
        return len(self._store._docs)

    def docs_cls(self):
        return self._cls

    def docs_namespace(self):
        return NAMESPACE

    def docs_lang(self):
        return None


class LocalQueries(BaseQueries):
    def __init__(self, load_fn: Callable[[], dict[str, str]]):
        self._load_fn = load_fn

    @cached_property
    def _queries(self):
        return self._load_fn()

    def queries_iter(self):
        return (GenericQuery(qid, text) for qid, text in self._queries.items())

    def queries_cls(self):
        return GenericQuery

    def queries_namespace(self):
        return NAMESPACE

    def queries_lang(self):
        return None


class LocalQrels(BaseQrels):
    def __init__(self, load_fn: Callable[[], dict]):
        self._load_fn = load_fn

    @cached_property
    def _qrels(self):
        return self._load_fn()

    def qrels_iter(self):
        return (TrecQrel(qid, docid, grade, "0") for qid, docs in self._qrels.items() for docid, grade in docs.items())

    def qrels_defs(self):
        return {}

    def qrels_cls(self):
        return TrecQrel


class LocalScoredDocs(BaseScoredDocs):
    def __init__(self, load_fn: Callable[[], dict]):
        self._load_fn = load_fn

    @cached_property
    def _run(self):
        return self._load_fn()

    def scoreddocs_iter(self):
        return (GenericScoredDoc(qid, docid, score) for qid, docs in self._run.items() for docid, score in docs.items())

    def scoreddocs_cls(self):
        return GenericScoredDoc


def _docs_component(path: Path) -> LocalDocs:
    def iterate():
        for r in iter_records(path, "docs"):
            yield BeirTitleDoc(r.id, r.text, r.title) if r.title else GenericDoc(r.id, r.text)
    return LocalDocs(iterate, BeirTitleDoc)


def register(slug: str, dataset: IrdsDataset) -> str:
    """Register under ``maw-local/<slug>`` (``@2``, ``@3``... when that id is taken by an earlier load)."""
    base = f"{NAMESPACE}/{slug}"
    irds_id, n = base, 1
    while irds_id in ir_datasets.registry._registered:  # the public register() refuses duplicates
        n += 1
        irds_id = f"{base}@{n}"
    ir_datasets.registry.register(irds_id, dataset)
    return irds_id


def local_name(path: Path) -> str:
    path = path.resolve()
    if path.is_dir():
        return path.name
    if path.suffix.lower() == ".json":  # candidate files are per retriever: rank_llm/BM25/retrieve_results_dl19.json
        return f"{path.parent.name}-{path.stem}"
    return path.parent.name if path.stem.lower() in _GENERIC_STEMS else path.stem


class LocalLayout:
    """What a local source provides before it is wrapped: the ir_datasets dataset plus naming facts."""

    def __init__(self, irds: IrdsDataset, name: str, split: str | None, source: str, kind: str,
                 has_candidates: bool, remove_query: bool = False):
        self.irds, self.name, self.split, self.source = irds, name, split, source
        self.kind, self.has_candidates, self.remove_query = kind, has_candidates, remove_query


def _once(load: Callable):
    """``load`` run on first call only (a BEIR split's qrels are needed by both its qrels and its queries)."""
    holder: list = []

    def get():
        if not holder:
            holder.append(load())
        return holder[0]
    return get


def beir_folder(folder: Path, split: str | None, qrels_duplicates: str = "error") -> LocalLayout:
    corpus = folder / "corpus.jsonl"
    queries = folder / "queries.jsonl"
    for required in (corpus, queries):
        if not required.is_file():
            raise FileNotFoundError(f"not a BEIR folder: {required} is missing (expected corpus.jsonl, queries.jsonl, qrels/*.tsv)")
    available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    if split is None:
        split = "test" if "test" in available else (available[0] if len(available) == 1 else None)
        if split is None and available:
            raise ValueError(f"{folder}: several qrels splits ({', '.join(available)}); choose one with option 'split'")
    qrels_path = folder / "qrels" / f"{split}.tsv" if split else None
    if qrels_path is not None and not qrels_path.is_file():
        raise FileNotFoundError(f"qrels file not found: {qrels_path} (splits here: {', '.join(available) or 'none'})")

    load_qrels = _once(lambda: read_qrels(qrels_path, duplicates=qrels_duplicates) if qrels_path else {})

    def load_queries():
        # Like BEIR's loader, a split's queries are those its qrels judge.
        allq = read_queries(queries)
        if qrels_path is None:
            return allq
        judged = load_qrels()
        missing = sorted(set(judged) - set(allq))
        if missing:
            raise DataFormatError(f"{qrels_path}: query id {missing[0]!r} is not in {queries} ({len(missing)} missing)")
        return {qid: text for qid, text in allq.items() if qid in judged}

    irds = IrdsDataset(_docs_component(corpus), LocalQueries(load_queries), LocalQrels(load_qrels))
    return LocalLayout(irds, folder.resolve().name, split, str(folder.resolve()), "beir", False, remove_query=True)


def docs_files(docs: Path, queries: str | Path | None, qrels: str | Path | None, run: str | Path | None,
               qrels_duplicates: str = "error") -> LocalLayout:
    if queries is None:
        raise ValueError(f"option 'queries' is required with a docs file ({docs}): give a queries .tsv or .jsonl")
    queries_path = require_file(queries, "queries")
    qrels_path = require_file(qrels, "qrels") if qrels else None
    run_path = require_file(run, "run") if run else None
    docs_comp = _docs_component(docs)

    def load_run():
        # Documents of the run missing from the corpus are reported (or skipped, on_missing: skip) by whoever
        # uses the candidates, like those of any other run.
        return read_run(run_path)

    irds = IrdsDataset(docs_comp, LocalQueries(lambda: read_queries(queries_path)),
                       LocalQrels(lambda: read_qrels(qrels_path, duplicates=qrels_duplicates)) if qrels_path else None,
                       LocalScoredDocs(load_run) if run_path else None)
    return LocalLayout(irds, local_name(docs), None, str(docs.resolve()), "tsv", run_path is not None)


def candidates_json(path: Path, qrels: str | Path | None, qrels_duplicates: str = "error") -> LocalLayout:
    qrels_path = require_file(qrels, "qrels") if qrels else None
    holder: dict = {}

    def data():
        if "c" not in holder:
            holder["c"] = read_rankllm_candidates(path)
        return holder["c"]

    def iter_docs():
        return (GenericDoc(docid, text) for docid, text in data().docs.items())

    irds = IrdsDataset(LocalDocs(iter_docs, GenericDoc), LocalQueries(lambda: data().queries),
                       LocalQrels(lambda: read_qrels(qrels_path, duplicates=qrels_duplicates)) if qrels_path else None,
                       LocalScoredDocs(lambda: data().run))
    return LocalLayout(irds, local_name(path), None, str(path.resolve()), "candidates", True)
