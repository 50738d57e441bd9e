"""Option sections shared by commands: the dataset, its Hugging Face rows, the candidate pool, the model. Each
option is declared once.

A command's options class inherits the sections it needs (``class EvalOptions(ModelOptions, DatasetOptions,
PoolOptions)``), so an option has one name, one default and one meaning in every command, and the functions
here turn a section into the object it describes.
"""

# No `from __future__ import annotations` and Optional[...] rather than `X | None`: the options parser reads
# the field types at runtime and recognises typing.Union.
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from maw_reranker.config.maw_spec import AUTO, parse_maw
from maw_reranker.utils.errors import OptionError

# Numeric precision of model forward passes, in every command (fp32 = no autocast; logits stay fp32).
Precision = Literal["fp32", "bf16", "fp16"]
PoolEngine = Literal["auto", "pyserini", "bm25s"]
MIN_LENGTH = 8  # tokens: [CLS] query [SEP] document [SEP] needs a few of each to mean anything


def opt(default, help_text: str, **metadata):
    """A dataclass field with its help text (lists/dicts get a fresh copy per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text, **metadata})
    return field(default=default, metadata={"help": help_text, **metadata})


class _Section:
    """Base of the sections: each checks its own fields in ``__post_init__`` and chains to the next."""

    def __post_init__(self) -> None:
        pass


@dataclass
class DatasetOptions(_Section):
    dataset: str = opt("", "dataset name (see `maw-rerank datasets`) or a path: BEIR folder, docs .tsv/.jsonl, or "
                           "RankLLM candidates .json; or hf:SPEC, a Hugging Face dataset (hub ID[:CONFIG], local "
                           "parquet/jsonl/csv files or a folder) read with the hf_* options")
    split: Optional[str] = opt(None, "split of a named dataset or BEIR folder (qrels/<split>.tsv)")
    queries: Optional[str] = opt(None, "queries .tsv/.jsonl (with a docs file)")
    qrels: Optional[str] = opt(None, "TREC qrels (with a docs file or candidates JSON)")
    run: Optional[str] = opt(None, "TREC run shipped with a docs-file dataset as its own candidates")
    dataset_name: Optional[str] = opt(None, "name for a local dataset (names its pool folder)")
    measures: Optional[list[str]] = opt(None, "ir_measures strings, primary first (None: the dataset's own)")
    qrels_duplicates: Literal["error", "last"] = opt("error", "a second judgment of the same (query, document) "
                                                              "pair in a qrels file: error, or last wins (warned)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.measures is not None:
            from maw_reranker.data.measures import check_measures

            check_measures(self.measures, "measures")


HFLayout = Literal["auto", "tuples", "labeled", "scored"]


@dataclass
class HFOptions(_Section):
    """How the rows of a Hugging Face dataset are read: training's ``hf_dataset`` (``source: hf``) and evaluation's
    ``dataset: hf:SPEC`` (data/hf.py; data/hf_eval.py)."""

    hf_split: str = opt("train", "split of the Hugging Face data (hf_dataset, or dataset hf:SPEC), hf_queries and "
                                 "hf_corpus: of a hub dataset or a folder (splits told from its file names); files "
                                 "given by name are one split")
    hf_layout: HFLayout = opt(
        "auto", "rows of the Hugging Face data: tuples = (query, positive, negatives...); labeled = (query, document, "
                "label[, score]) rows grouped by query; scored = (query, document ids, teacher scores; training "
                "only); auto = from the columns")
    hf_columns: dict = opt({}, "column of each role when it differs from the usual names, e.g. {query: q, positive: "
                               "pos, negatives: negs}; roles: query, positive, negatives, document, label, score, "
                               "documents, scores, positive_score, negative_scores, queries_id, queries_text, "
                               "corpus_id, corpus_text")
    hf_queries: Optional[str] = opt(None, "query texts (ID:CONFIG or a file; columns id + text) when the rows hold "
                                          "query ids; default: training: the queries of 'dataset' when it is set; "
                                          "otherwise the rows hold the query texts")
    hf_corpus: Optional[str] = opt(None, "document texts (ID:CONFIG or a file; columns id + text) when the rows hold "
                                         "document ids; default: training: the documents of 'dataset' when it is "
                                         "set; otherwise the rows hold the document texts")

    @property
    def hf_options(self) -> dict:
        """The section as ``load_dataset``'s ``hf`` argument (how a ``dataset: hf:SPEC`` is read)."""
        return {"split": self.hf_split, "layout": self.hf_layout, "columns": dict(self.hf_columns),
                "queries": self.hf_queries, "corpus": self.hf_corpus}

    def hf_options_given(self) -> list:
        """The options of this section set away from their defaults (for "applies only to ..." errors)."""
        given = [n for n in ("hf_queries", "hf_corpus", "hf_columns") if getattr(self, n)]
        return given + (["hf_layout"] if self.hf_layout != "auto" else []) + \
            (["hf_split"] if self.hf_split != "train" else [])


@dataclass
class PoolOptions(_Section):
    candidates: Optional[str] = opt(None, "TREC run of candidates over the dataset's documents (default: the "
                                          "dataset's own candidates, else its BM25 pool, built and cached once)")
    pool_engine: PoolEngine = opt("auto", "engine of the BM25 pool when one must be built (auto = pyserini when "
                                          "installed, else bm25s)")
    pool_k: int = opt(1000, "BM25 pool depth when one must be built")
    pools_dir: str = opt("pools", "pools folder (shared with build-pools)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_k < 1:
            raise ValueError(f"option 'pool_k' must be >= 1, got {self.pool_k}")


@dataclass
class ModelOptions(_Section):
    model: str = opt("", "cross-encoder: a Hugging Face hub id (e.g. cross-encoder/ms-marco-MiniLM-L-12-v2; offline: "
                         "from the Hugging Face cache with HF_HUB_OFFLINE=1) or a local directory (a saved "
                         "CrossEncoderWithMAW included)")
    maw: Any = opt(AUTO, "MAW variant: auto = what the model directory saved (unpatched for a plain checkpoint); "
                         "null = unpatched; or a mapping of MAWConfig fields (YAML in a config, YAML/JSON on the "
                         "command line, e.g. '{depth_dim: 4, gating_mode: uniform}')")
    max_length: Optional[int] = opt(None, "max tokens per (query, document) pair (default: the model's, at most 512)")
    fresh_maw: bool = opt(False, "a model that saved MAW: start its MAW parameters fresh instead of loading the trained "
                                 "ones (needed for a `maw` of another structure: depth, source, gating, layers)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length is not None and self.max_length < MIN_LENGTH:
            raise ValueError(f"option 'max_length' must be >= {MIN_LENGTH} (room for a query, a document and the "
                             f"special tokens) or null, got {self.max_length}")
        parse_maw(self.maw)  # a bad spec names its key now, before any file is read

    @property
    def maw_spec(self):
        """The parsed ``maw`` option: a MAWConfig, None (unpatched) or "auto"."""
        return parse_maw(self.maw)


NegativeSampling = Literal["random", "top"]


@dataclass
class NegativeOptions(_Section):
    """Which candidates may be negatives of a query, and how many: training's groups and mined negatives."""

    num_negatives: int = opt(7, "negatives per query: train: per group (group = 1 positive + num_negatives); "
                                "mine-negatives: kept per query, at most")
    neg_rank_min: int = opt(1, "highest candidate rank (1-based, inclusive) a negative may come from (mine-negatives: "
                               "in the miner's order with the positives counted; not sentence-transformers' 0-based "
                               "range_min)")
    neg_rank_max: int = opt(100, "lowest candidate rank (inclusive) a negative may come from")
    sampling_strategy: NegativeSampling = opt(
        "random", "which candidates of the rank window: random = a uniform sample (train: fresh every epoch); "
                  "top = the best-ranked ones (as sentence-transformers' mine_hard_negatives)")
    relevance_threshold: int = opt(1, "a qrels grade >= this is a positive")
    max_negative_grade: int = opt(0, "judged documents of at most this grade may be negatives (0 = judged-relevant "
                                     "documents never are; with graded qrels, e.g. threshold 2 and 1 here, the "
                                     "model learns to put grade 2 above grade 1); must be < relevance_threshold")
    missing_positives: Literal["error", "skip"] = opt(
        "error", "judged positives whose text is not in the corpus: error, or skip them (e.g. a candidates file that "
                 "holds only the retrieved texts, such as TREC DL's BM25 top-100); a query left without one is "
                 "left out")
    max_queries: Optional[int] = opt(None, "only this many queries with a positive (a deterministic subset by seed, "
                                           "the same in train and mine-negatives)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_negatives", "neg_rank_min"):
            if getattr(self, name) < 1:
                raise OptionError(f"option '{name}' must be >= 1, got {getattr(self, name)}")
        if self.neg_rank_max < self.neg_rank_min:
            raise OptionError(f"option 'neg_rank_max' ({self.neg_rank_max}) is below 'neg_rank_min' "
                             f"({self.neg_rank_min})")
        if not 0 <= self.max_negative_grade < self.relevance_threshold:
            raise OptionError(f"option 'max_negative_grade' must be >= 0 and < relevance_threshold "
                             f"({self.relevance_threshold}), got {self.max_negative_grade}")
        if self.max_queries is not None and self.max_queries < 1:
            raise OptionError(f"option 'max_queries' must be >= 1 or null, got {self.max_queries}")


CacheDtype = Literal["fp16", "bf16", "fp32"]


@dataclass
class PrefixCacheOptions(_Section):
    top_layers: int = opt(1, "how many of the last encoder layers run per model (they must include the MAW layers): "
                             "trainable: top trains them, lora_layers: top adapts them, prefix_cache caches the "
                             "input of the first of them")
    prefix_cache: Optional[str] = opt(None, "folder of the frozen-prefix cache: the input of the first of the last "
                                            "top_layers layers, computed once per pair and shared by every model with "
                                            "the same prefix; then only the top layers run (one process)")
    prefix_cache_dtype: CacheDtype = opt("fp16", "storage precision of the prefix cache (fp32: exact; fp16 moves "
                                                 "logits by ~1e-3)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_layers < 1:
            raise ValueError(f"option 'top_layers' must be >= 1, got {self.top_layers}")
        if self.prefix_cache is not None:
            from maw_reranker.utils.io import check_writable

            check_writable(self.prefix_cache, "prefix_cache")


def resolve_model_path(model: str) -> str:
    """A local model folder (``~`` and ``$VARS`` expanded) or a hub id, passed through."""
    if not str(model).strip():
        raise ValueError("option 'model' is empty: give a hub id (e.g. cross-encoder/ms-marco-MiniLM-L-12-v2) or a "
                         "model directory")
    expanded = os.path.expandvars(os.path.expanduser(model))
    if Path(expanded).exists():
        return expanded
    # "org/name" is a hub id; anything spelled like a path must exist (a clear error now, not a hub lookup later).
    if model.startswith((".", "/", "~", "$")) or model.count("/") > 1 or "\\" in model:
        raise FileNotFoundError(f"option 'model': model directory not found: {expanded}")
    return model


def dataset_from_options(options: DatasetOptions):
    """The dataset a ``DatasetOptions`` section describes."""
    from maw_reranker.data.load import load_dataset

    hf = options.hf_options if isinstance(options, HFOptions) else None  # read for a dataset hf:SPEC only
    return load_dataset(options.dataset, options.split, queries=options.queries, qrels=options.qrels,
                        run=options.run, name=options.dataset_name, measures=options.measures,
                        qrels_duplicates=options.qrels_duplicates, hf=hf)


def candidates_from_options(options: PoolOptions, ds, *, streaming: bool = False, guard=None):
    """The one candidate resolver (``retrieve.candidates``) with a ``PoolOptions`` section's settings."""
    from maw_reranker.retrieve.candidates import resolve_candidates

    return resolve_candidates(ds, options.candidates, engine=options.pool_engine, k=options.pool_k,
                              pools_dir=options.pools_dir, streaming=streaming, guard=guard)
