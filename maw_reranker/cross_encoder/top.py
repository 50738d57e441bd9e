"""The top of a split cross-encoder in the shapes training and scoring already use.

* :class:`TopModel`: an ``nn.Module`` whose forward takes a cached batch (``hidden_states``, ``attention_mask``) and
  returns the logits, so the trainer, its objective (router oracle, GRPO) and Accelerate treat it like the whole
  model; ``train()`` keeps the prefix in eval mode.
* :class:`CachedScorer`: ``CrossEncoderWithMAW.predict``'s interface over a :class:`PrefixCache`, so the one scoring
  loop (``evaluate.rerank.score_pairs``) serves dev evaluation and reranking from the cache unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from maw_reranker.cross_encoder.activation import apply_activation, check_activation
from maw_reranker.cross_encoder.model import depth_buffers, record_depth
from maw_reranker.cross_encoder.prefix import top_forward, train_top
from maw_reranker.maw.patcher import maw_layers


class TopModel(nn.Module):
    def __init__(self, encoder, start: int):
        super().__init__()
        self.encoder = encoder
        self.start = int(start)

    def forward(self, input_ids=None, attention_mask=None, hidden_states=None, **_unused) -> torch.Tensor:
        # input_ids is a placeholder of the batch's shape: the objective reads batch size and device from it.
        return top_forward(self.encoder, {"hidden_states": hidden_states, "attention_mask": attention_mask},
                           self.start)

    def train(self, mode: bool = True) -> "TopModel":
        self.training = mode
        train_top(self.encoder, self.start, mode)  # the prefix never drops out: its states are fixed
        return self


def cached_features(cache, pairs: Sequence[tuple[str, str]], device=None) -> dict:
    """A training batch from the cache (states computed when missing), shaped like tokenizer features."""
    batch = cache.get_or_compute(list(pairs), device=device)
    mask = batch["attention_mask"]
    return {"input_ids": torch.zeros_like(mask, dtype=torch.long), "attention_mask": mask,
            "hidden_states": batch["hidden_states"]}


class CachedScorer:
    """Scores pairs through the prefix cache and the top layers only (eval mode, ``inference_mode``); ``predict``
    takes the arguments of ``CrossEncoderWithMAW.predict`` and returns what it does."""

    def __init__(self, encoder, cache):
        self.encoder = encoder
        self.cache = cache
        self.model = encoder.model  # what callers inspect for MAW layers
        self.max_length = encoder.max_length

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.inference_mode()
    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, precision: str = "fp32",
                activation: str | None = None, show_progress_bar: bool = False, return_depth: bool = False):
        check_activation(activation)
        pairs = [tuple(p) for p in pairs]
        # MAW layers of the top only: one inside the prefix ran when its states were cached, not now
        layers = {m.layer_index: m for m in maw_layers(self.model).values() if m.layer_index >= self.cache.start}
        depth = depth_buffers(layers, len(pairs)) if return_depth else {}
        scores = np.zeros(len(pairs), dtype=np.float32)
        if not pairs:
            return (scores, depth) if return_depth else scores
        self.cache.fill(pairs, show_progress=show_progress_bar)
        order = np.argsort(-self.cache.lengths(pairs), kind="stable")  # little padding per batch, as predict does
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            for first in range(0, len(pairs), batch_size):
                idx = order[first:first + batch_size]
                batch = self.cache.get([pairs[i] for i in idx])
                with self.encoder.autocast(precision):
                    logits = top_forward(self.encoder, batch, self.cache.start)
                scores[idx] = logits.float().cpu().numpy()
                if return_depth:
                    record_depth(depth, layers, idx)
        finally:
            self.encoder.train(was_training)
        scores = apply_activation(scores, activation)
        return (scores, depth) if return_depth else scores
