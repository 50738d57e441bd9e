"""`maw-rerank demo`: the whole pipeline offline on the built-in synthetic collection (a few minutes on a CPU)."""

from dataclasses import dataclass, field

HELP = ("Run the whole pipeline offline on the built-in demo collection: BM25 pools, training, reranking, "
        "significance tests, plots.")


@dataclass
class Options:
    RENAMED = {"out_dir": "use 'output_dir'"}

    output_dir: str = field(default="demo_output", metadata={"help": "where the collection, pools, models and runs go"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "training/evaluation seeds"})
    train_steps: int = field(default=300, metadata={"help": "optimizer steps per trained model"})
    batch_size: int = field(default=64, metadata={"help": "pairs per scoring batch"})


def run(options: Options) -> int:
    from maw_reranker.demo.pipeline import report, run_demo

    if options.train_steps < 1 or not options.seeds:
        raise ValueError("option 'train_steps' must be >= 1 and 'seeds' must name at least one seed")
    result = run_demo(options.output_dir, tuple(options.seeds), options.train_steps, options.batch_size)
    print(report(result))
    return 0
