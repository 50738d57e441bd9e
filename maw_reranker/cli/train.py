"""`maw-rerank train`: fine-tune a cross-encoder (optionally MAW-patched); every option in configs/training/*.yaml."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import json
from dataclasses import dataclass

from maw_reranker.train.config import TrainOptions

HELP = ("Fine-tune a cross-encoder on groups of one positive and n BM25 hard negatives (listwise/pairwise/BCE; "
        "full, MAW-only or LoRA; learned MAW gating incl. router and GRPO). Accelerate-driven: run it under "
        "`accelerate launch` for several GPUs; --resume latest continues a killed run exactly.")


@dataclass
class Options(TrainOptions):
    pass


def run(options: Options) -> int:
    from maw_reranker.train.trainer import train

    result = train(options)
    summary = {"final_model": str(result.final_model), "steps": result.steps,
               "pairs_per_second": round(result.pairs_per_second, 2), "parameters": result.parameters}
    if result.best_metric is not None:
        summary.update(best_metric=round(result.best_metric, 4), best_step=result.best_step,
                       best_model=str(result.output_dir / "best"))
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch`, once (not once per process)
        print(json.dumps(summary))
    return 0
