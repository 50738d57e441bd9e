"""`maw-rerank train`: fine-tune cross-encoders (with or without MAW) on groups of one positive and n hard negatives.

Entry points: :func:`train` (options -> :class:`TrainResult`), :class:`TrainOptions`. Modules: ``data`` (groups,
negatives, streaming), ``sources`` (datasets/pools -> groups, input checks), ``losses`` (one module per loss),
``routing`` (router oracle supervision, GRPO), ``objective``, ``params`` (what trains), ``lora``, ``dev``,
``checkpoints``, ``trainer`` (the Accelerate loop).
"""

from maw_reranker.train.config import TrainOptions

__all__ = ["TrainOptions", "TrainResult", "train"]


def __getattr__(name):  # the trainer imports accelerate/transformers; keep `import maw_reranker.train` light
    if name in ("train", "TrainResult", "Trainer"):
        from maw_reranker.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
