"""``load_dataset``: one entry point for registry names and local files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import ir_datasets

from maw_reranker.data import local
from maw_reranker.data.dataset import Dataset, slugify
from maw_reranker.data.registry import find_spec, get_spec
from maw_reranker.data.trec import QRELS_DUPLICATES

LOCAL_MEASURES = ("nDCG@10", "R@100")
_PATH_SUFFIXES = {".json", ".jsonl", ".tsv", ".txt", ".tab"}


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or Path(source).suffix.lower() in _PATH_SUFFIXES


def load_dataset(source: str | Path, split: str | None = None, *, queries: str | Path | None = None,
                 qrels: str | Path | None = None, run: str | Path | None = None, name: str | None = None,
                 measures: Iterable[str] | None = None, qrels_duplicates: str = "error",
                 hf: Mapping | None = None) -> Dataset:
    """Load a registered dataset by name (via ir_datasets) or a local one by path.

    Local sources: a BEIR folder; a docs ``.tsv``/``.jsonl`` file with ``queries=`` (and optionally ``qrels=``,
    ``run=`` for a TREC run of candidates); a RankLLM candidates ``.json`` (optionally ``qrels=``).
    ``name`` renames a local dataset (it names its pool folder); ``measures`` overrides the metrics.
    ``qrels_duplicates``: a local qrels file judging a (query, document) pair twice is an error (``"error"``), or
    the last judgment wins with a warning (``"last"``).
    ``hf:SPEC``: a Hugging Face dataset read for evaluation (``data/hf_eval.py``); ``hf`` holds how (keys
    ``split``, ``layout``, ``columns``, ``queries``, ``corpus``: the ``hf_*`` options).
    """
    if qrels_duplicates not in QRELS_DUPLICATES:
        raise ValueError(f"option 'qrels_duplicates' must be one of {', '.join(map(repr, QRELS_DUPLICATES))}, "
                         f"got {qrels_duplicates!r}")
    text = str(source).strip()
    if not text:
        raise ValueError("option 'dataset' is empty; give a dataset name (see `maw-rerank datasets`) or a path")
    if text.startswith("hf:"):
        return _load_hf(text[len("hf:"):], split, queries, qrels, run, name, measures, qrels_duplicates, hf)
    path = Path(text).expanduser()
    if path.exists():
        return _load_local(path, split, queries, qrels, run, name, measures, qrels_duplicates)
    if find_spec(text) is None and _looks_like_path(text):
        raise FileNotFoundError(f"dataset path not found: {path}")
    if queries or qrels or run:
        raise ValueError(f"options 'queries', 'qrels' and 'run' apply to local files only, not to dataset {text!r}")
    spec, name_split = get_spec(text)
    split = split or name_split or spec.default_split
    irds_id = spec.irds_id(split)
    # Lazy: ir_datasets downloads only when data is first read, so listing/configuring works offline.
    irds = ir_datasets.load(irds_id)
    return Dataset(spec.name, irds, irds_id, measures or spec.measures, split=split,
                   slug=slugify(spec.name) + (f"-{split}" if len(spec.splits) > 1 else ""),
                   corpus_slug=slugify(ir_datasets.docs_parent_id(irds_id)), kind="registry",
                   remove_query=spec.remove_query, pyserini_index=spec.pyserini_index)


def _load_hf(spec, split, queries, qrels, run, name, measures, qrels_duplicates, hf) -> Dataset:
    from maw_reranker.data.hf_eval import load_hf_eval

    if split:
        raise ValueError(f"option 'split' does not apply to a Hugging Face dataset (hf:{spec}); use 'hf_split'")
    for option, value in (("queries", queries), ("qrels", qrels), ("run", run)):
        if value:
            raise ValueError(f"option '{option}' does not apply to a Hugging Face dataset (hf:{spec}): its rows give "
                             "the queries, qrels and candidates (texts by id: 'hf_queries' / 'hf_corpus')")
    return load_hf_eval(spec, name=name, measures=measures, qrels_duplicates=qrels_duplicates, **dict(hf or {}))


def _load_local(path: Path, split, queries, qrels, run, name, measures, qrels_duplicates) -> Dataset:
    if path.is_dir():
        if queries or run:
            raise ValueError(f"options 'queries' and 'run' do not apply to a BEIR folder ({path})")
        if qrels:
            raise ValueError(f"option 'qrels' does not apply to a BEIR folder ({path}); choose qrels/<split>.tsv with 'split'")
        layout = local.beir_folder(path, split, qrels_duplicates)
    elif path.suffix.lower() == ".json":
        if queries or run:
            raise ValueError(f"options 'queries' and 'run' do not apply to a candidates JSON ({path}): it carries both")
        layout = local.candidates_json(path, qrels, qrels_duplicates)
    else:
        layout = local.docs_files(path, queries, qrels, run, qrels_duplicates)
    if split and layout.kind != "beir":
        raise ValueError(f"option 'split' applies to registry datasets and BEIR folders, not to {path}")
    name = name or layout.name
    corpus_slug = slugify(name)
    slug = corpus_slug + (f"-{layout.split}" if layout.split else "")
    irds_id = local.register(slug, layout.irds)
    return Dataset(name, ir_datasets.load(irds_id), irds_id, measures or LOCAL_MEASURES, split=layout.split,
                   slug=slug, corpus_slug=corpus_slug, source=layout.source, kind=layout.kind,
                   remove_query=layout.remove_query, has_candidates=layout.has_candidates)
