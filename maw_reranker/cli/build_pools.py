"""`maw-rerank build-pools`: BM25 top-k candidate pools (TREC runs), cached per dataset."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import sys
from dataclasses import dataclass, field
from typing import Literal

from maw_reranker.config.sections import DatasetOptions, dataset_from_options

HELP = "Write BM25 top-k candidate pools (TREC run files) for a dataset; cached unless --force."


@dataclass
class Options(DatasetOptions):
    CONFIG_KINDS = ("datasets",)

    engine: Literal["auto", "pyserini", "bm25s"] = field(default="auto", metadata={
        "help": "pyserini = Lucene via Pyserini (pip install 'maw-reranker[pyserini]'); bm25s = embedded, no Java; "
                "auto = pyserini when installed, else bm25s"})
    k: int = field(default=1000, metadata={"help": "hits per query"})
    k1: float = field(default=0.9, metadata={"help": "BM25 k1"})
    b: float = field(default=0.4, metadata={"help": "BM25 b"})
    out_dir: str = field(default="pools", metadata={"help": "pools folder: <out_dir>/<dataset>/bm25-<engine>-k<k>.run"})
    force: bool = field(default=False, metadata={"help": "rebuild the index and the pool even if cached"})
    threads: int = field(default=0, metadata={"help": "indexing/search threads (0 = all cores)"})
    prebuilt: bool = field(default=True, metadata={"help": "pyserini: use Pyserini's prebuilt index for named "
                                                           "datasets when it can be downloaded"})
    evaluate: bool = field(default=True, metadata={"help": "print the pool's scores when the dataset has qrels"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.out_dir).strip():
            raise ValueError("option 'out_dir' is empty")
        if self.k < 1:
            raise ValueError(f"option 'k' must be >= 1, got {self.k}")
        if self.threads < 0:
            raise ValueError(f"option 'threads' must be >= 0, got {self.threads}")
        if self.run:
            raise ValueError("option 'run' is a dataset's own candidates; build-pools builds BM25 pools and has no "
                             "use for it (leave it out)")


def pool_scores(ds, path, k: int) -> dict[str, float]:
    """The dataset's measures, plus recall at the pool depth, of the run at ``path``."""
    from maw_reranker.data.trec import read_run
    from maw_reranker.evaluate.metrics import evaluate_run, measure_names

    measures = measure_names(list(ds.measures) + [f"R@{k}"])
    return {m: float(v) for m, v in evaluate_run(read_run(path), ds.qrels(), measures).aggregate.items()}


def run(options: Options) -> int:
    from maw_reranker.retrieve import EngineUnavailableError, build_pool

    ds = dataset_from_options(options)
    try:
        path = build_pool(ds, engine=options.engine, k=options.k, k1=options.k1, b=options.b,
                          out_dir=options.out_dir, force=options.force, threads=options.threads or None,
                          prebuilt=options.prebuilt)
    except EngineUnavailableError as exc:
        print(f"maw-rerank build-pools: error: {exc}", file=sys.stderr)
        return 1
    line = f"{ds.slug}: {path}"
    if options.evaluate and ds.qrels():
        line += "  " + "  ".join(f"{m}={v:.4f}" for m, v in pool_scores(ds, path, options.k).items())
    print(line)
    return 0
