"""Dataset options shared by CLI commands: subclass ``DatasetOptions`` and call ``dataset_from_options``."""

# No `from __future__ import annotations` and Optional[...] rather than `X | None`: the options parser reads
# the field types at runtime and recognises typing.Union.
from dataclasses import dataclass, field
from typing import Optional

from maw_reranker.data.dataset import Dataset
from maw_reranker.data.load import load_dataset


@dataclass
class DatasetOptions:
    dataset: str = field(default="", metadata={"help": "dataset name (see `maw-rerank datasets`) or a path: BEIR "
                                                     "folder, docs .tsv/.jsonl, or RankLLM candidates .json"})
    split: Optional[str] = field(default=None, metadata={"help": "split of a named dataset or BEIR folder (qrels/<split>.tsv)"})
    queries: Optional[str] = field(default=None, metadata={"help": "queries .tsv/.jsonl (with a docs file)"})
    qrels: Optional[str] = field(default=None, metadata={"help": "TREC qrels (with a docs file or candidates JSON)"})
    run: Optional[str] = field(default=None, metadata={"help": "TREC run of candidates (with a docs file)"})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "name for a local dataset (names its pool folder)"})
    measures: Optional[list[str]] = field(default=None, metadata={"help": "ir_measures strings, primary first "
                                                                      "(None: the dataset's own)"})


def dataset_from_options(options: DatasetOptions) -> Dataset:
    return load_dataset(options.dataset, options.split, queries=options.queries, qrels=options.qrels,
                        run=options.run, name=options.dataset_name, measures=options.measures)
