"""Each learned gating mode's parameters change after a few steps; what-trains regimes freeze what they should."""

from __future__ import annotations

import pytest
import torch

from maw_reranker.maw.patcher import maw_named_parameters
from maw_reranker.train.data import DataPosition, iter_batches
from maw_reranker.train.trainer import Trainer
from tests.train.helpers import options, tiny_model_dir, write_task


def _snapshot(named):
    return {n: p.detach().clone() for n, p in named}


@pytest.fixture(scope="module")
def task_and_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes")
    return tmp, write_task(tmp / "task"), tiny_model_dir(tmp / "model")


@pytest.mark.parametrize("mode,extra,logged", [
    ("learned", {}, "loss/rank"),
    ("gate", {}, "loss/rank"),
    ("router", {}, "loss/rank"),
    ("router", {"router_oracle_weight": 1.0}, "loss/router_oracle"),
    ("grpo", {"grpo_group_size": 3}, "grpo/policy"),
])
def test_learned_mode_parameters_change(task_and_model, mode, extra, logged):
    tmp, task, model = task_and_model
    out = tmp / f"{mode}-{len(extra)}"
    trainer = Trainer(options(out, task, model, maw={"gating_mode": mode, "depth_dim": 4, "maw_strength": 0.5},
                              max_steps=3, **extra))
    trainer.setup()
    before = _snapshot(maw_named_parameters(trainer.encoder.model))
    assert before, "the mode should add parameters"
    result = trainer.run()
    after = dict(maw_named_parameters(trainer.encoder.model))
    gating = [n for n in before if ".gating." in n]
    changed = [n for n in gating if not torch.equal(before[n], after[n].detach())]
    # The first layer of a zero-initialised MLP gets no gradient on step 1, so "changed" means: some tensor moved.
    assert changed, f"{mode}: no gating parameter changed ({gating})"
    assert all(logged in row for row in result.history)


def test_maw_only_freezes_backbone(task_and_model):
    tmp, task, model = task_and_model
    trainer = Trainer(options(tmp / "mawonly", task, model, maw={"gating_mode": "learned", "depth_dim": 4},
                              trainable="maw_only", max_steps=2))
    trainer.setup()
    backbone = {n: p.detach().clone() for n, p in trainer.encoder.model.named_parameters()
                if n.startswith("bert.") and ".pooler." not in n and ".gating." not in n}
    head = trainer.encoder.model.classifier.weight.detach().clone()
    theta = [p.detach().clone() for n, p in maw_named_parameters(trainer.encoder.model)]
    trainer.run()
    now = dict(trainer.encoder.model.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in backbone.items())
    assert not torch.equal(head, trainer.encoder.model.classifier.weight)
    assert not torch.equal(theta[0], next(p for _, p in maw_named_parameters(trainer.encoder.model)))


def test_bf16_autocast_keeps_fp32_logits_and_losses(task_and_model):
    tmp, task, model = task_and_model
    trainer = Trainer(options(tmp / "bf16", task, model, maw={"gating_mode": "router", "depth_dim": 4},
                              router_oracle_weight=1.0, precision="bf16", grad_accum=2, max_steps=2))
    trainer.setup()
    batch = next(iter_batches(trainer.data.source, trainer.global_batch, DataPosition()))
    features = trainer._features(batch)
    with trainer.accelerator.autocast():
        loss, logs = trainer.objective(trainer.model, trainer.encoder, features, 0)
        inner = trainer.encoder.model(**features).logits
    assert inner.dtype == torch.bfloat16  # autocast is really on inside the model ...
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in logs.values())  # ... not outside
    result = trainer.run()
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


@pytest.mark.parametrize("regime", [dict(trainable="top", top_layers=1),
                                    dict(trainable="lora", lora_layers="top", top_layers=1, lora_r=2)])
def test_top_layer_regimes_leave_the_prefix_untouched(task_and_model, regime):
    tmp, task, model = task_and_model
    trainer = Trainer(options(tmp / regime["trainable"], task, model, maw={"gating_mode": "learned", "depth_dim": 4},
                              max_steps=2, **regime))
    trainer.setup()
    last = trainer.encoder.model.config.num_hidden_layers - 1
    prefix = {n: p.detach().clone() for n, p in trainer.encoder.model.named_parameters()
              if "embeddings" in n or (".layer." in n and f".layer.{last}." not in n)}
    result = trainer.run()
    now = dict(trainer.encoder.model.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in prefix.items())
    assert result.parameters["trainable"] < result.parameters["total"]
    assert (result.parameters["lora"] > 0) == (regime["trainable"] == "lora")
