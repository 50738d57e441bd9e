"""`maw-rerank build-pools`: BM25 top-k candidate pools (TREC runs), cached per dataset."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import sys
from dataclasses import dataclass, field

from maw_reranker.config.sections import DatasetOptions, PoolEngine, dataset_from_options

HELP = "Write BM25 top-k candidate pools (TREC run files) for a dataset; cached unless --force."


@dataclass
class Options(DatasetOptions):
    CONFIG_KINDS = ("datasets",)

    RENAMED = {"engine": "use 'pool_engine'", "k": "use 'pool_k'", "out_dir": "use 'pools_dir'"}

    pool_engine: PoolEngine = field(default="auto", metadata={
        "help": "pyserini = Lucene via Pyserini (pip install 'maw-reranker[pyserini]'); bm25s = embedded, no Java; "
                "auto = pyserini when installed, else bm25s"})
    pool_k: int = field(default=1000, metadata={"help": "hits per query"})
    k1: float = field(default=0.9, metadata={"help": "BM25 k1"})
    b: float = field(default=0.4, metadata={"help": "BM25 b"})
    pools_dir: str = field(default="pools", metadata={"help": "pools folder (the pools_dir of eval and train): "
                                                             "<pools_dir>/<dataset>/bm25-<engine>-k<k>.run"})
    force: bool = field(default=False, metadata={"help": "rebuild the index and the pool even if cached"})
    threads: int = field(default=0, metadata={"help": "indexing/search threads (0 = all cores)"})
    prebuilt: bool = field(default=True, metadata={"help": "pyserini: use Pyserini's prebuilt index for named "
                                                           "datasets when it can be downloaded"})
    evaluate: bool = field(default=True, metadata={"help": "print the pool's scores when the dataset has qrels"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.pools_dir).strip():
            raise ValueError("option 'pools_dir' is empty")
        if self.pool_k < 1:
            raise ValueError(f"option 'pool_k' must be >= 1, got {self.pool_k}")
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
        path = build_pool(ds, engine=options.pool_engine, k=options.pool_k, k1=options.k1, b=options.b,
                          pools_dir=options.pools_dir, force=options.force, threads=options.threads or None,
                          prebuilt=options.prebuilt)
    except EngineUnavailableError as exc:
        print(f"maw-rerank build-pools: error: {exc}", file=sys.stderr)
        return 1
    line = f"{ds.slug}: {path}"
    if options.evaluate and ds.qrels():
        line += "  " + "  ".join(f"{m}={v:.4f}" for m, v in pool_scores(ds, path, options.pool_k).items())
    print(line)
    return 0
