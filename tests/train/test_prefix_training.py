"""Top-layer training from the frozen-prefix cache: the same losses as without it, step for step, and a full model."""

import numpy as np
import pytest

from maw_reranker import CrossEncoderWithMAW
from maw_reranker.train import train
from maw_reranker.train.trainer import Trainer, release_accelerator_state
from tests.train.helpers import options, tiny_model_dir, write_task

MODES = {"plain": dict(maw=None),
         "learned": dict(maw={"gating_mode": "learned", "depth_dim": 2}),
         "router_oracle": dict(maw={"gating_mode": "router", "depth_dim": 2}, router_oracle_weight=0.5),
         "grpo": dict(maw={"gating_mode": "grpo", "depth_dim": 2}, grpo_group_size=2)}


@pytest.fixture(scope="module")
def task_and_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefix")
    return tmp, write_task(tmp / "task"), tiny_model_dir(tmp / "model")


PAIRS = [("apple story", "apple the of apples"), ("river story", "a story of engines")]


@pytest.mark.parametrize("mode", list(MODES))
def test_cached_and_uncached_top_training_match_step_for_step(task_and_model, mode):
    # Both paths agree to float rounding (~1e-7 in fp32). Adam turns rounding in near-zero gradients into
    # parameter differences of ~1e-6, and a sampling mode (GRPO) can then flip a sampled depth after a few more
    # steps: 3 steps (2 for GRPO) with a dev evaluation are compared.
    tmp, task, model = task_and_model
    steps = 2 if mode == "grpo" else 3
    common = dict(trainable="top", top_layers=1, max_steps=steps, holdout_queries=3, dev_every=2, **MODES[mode])
    plain = train(options(tmp / f"{mode}-plain", task, model, **common))
    trainer = Trainer(options(tmp / f"{mode}-cached", task, model, prefix_cache=str(tmp / "cache"),
                              prefix_cache_dtype="fp32", **common))
    cached = trainer.run()
    release_accelerator_state()
    for a, b in zip(plain.history, cached.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (mode, a["step"])
    assert plain.best_metric == pytest.approx(cached.best_metric, abs=1e-6)
    # trained from the cache, saved as a full model: from_pretrained scores exactly as the trained model did
    loaded = CrossEncoderWithMAW.from_pretrained(cached.final_model, device="cpu")
    np.testing.assert_allclose(loaded.predict(PAIRS), trainer.encoder.predict(PAIRS), atol=1e-5)
    uncached = CrossEncoderWithMAW.from_pretrained(plain.final_model, device="cpu").predict(PAIRS)
    np.testing.assert_allclose(loaded.predict(PAIRS), uncached, atol=5e-3)


def test_prefix_cache_needs_a_frozen_prefix(task_and_model):
    tmp, task, model = task_and_model
    with pytest.raises(ValueError, match="prefix_cache' needs a frozen prefix"):
        train(options(tmp / "bad", task, model, prefix_cache=str(tmp / "cache"), trainable="full"))
