"""The saved final model loads with CrossEncoderWithMAW.from_pretrained and scores like the trained model; dev
evaluation picks and saves the best checkpoint; TensorBoard logs are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
from maw_reranker.train.trainer import Trainer
from tests.train.helpers import options, tiny_model_dir, write_task

PAIRS = [("apple story", "apple the of apples"), ("apple story", "river a of"), ("tiger story", "tiger is tigers"),
         ("castle story", "ocean with some")]


@pytest.mark.parametrize("maw,trainable", [
    ({"gating_mode": "gate", "depth_dim": 4, "maw_strength": 0.5}, "full"),
    ({"gating_mode": "grpo", "depth_dim": 4, "depth_source": "project", "depth_rank": 2}, "full"),
    ({"gating_mode": "learned", "depth_dim": 4}, "lora"),
    (None, "full"),
])
def test_final_model_loads_and_scores_the_same(tmp_path, maw, trainable):
    task = write_task(tmp_path / "t")
    model = tiny_model_dir(tmp_path / "m")
    trainer = Trainer(options(tmp_path, task, model, maw=maw, trainable=trainable, max_steps=3,
                              lora_target_modules=["query", "key", "value", "dense"] if trainable == "lora" else None))
    result = trainer.run()
    expected = trainer.encoder.predict(PAIRS)
    loaded = CrossEncoderWithMAW.from_pretrained(result.final_model, device="cpu")
    assert (loaded.maw_config is None) == (maw is None)
    np.testing.assert_allclose(loaded.predict(PAIRS), expected, rtol=1e-5, atol=1e-5)
    if trainable == "lora":  # merged: a plain HF directory without adapter weights
        assert not any("lora_" in k for k in loaded.model.state_dict())
        assert any("lora_" in n for n, _ in trainer.encoder.model.named_parameters())
    untrained = CrossEncoderWithMAW.from_pretrained(model, maw=loaded.maw_config, device="cpu")
    assert not np.allclose(untrained.predict(PAIRS), expected)


def test_dev_evaluation_selects_best_and_logs(tmp_path):
    task = write_task(tmp_path / "t", n_queries=16)
    model = tiny_model_dir(tmp_path / "m")
    opts = options(tmp_path, task, model, maw={"gating_mode": "learned", "depth_dim": 4}, holdout_queries=4,
                   dev_every=2, max_steps=6, checkpoint_every=4, report_to=["tensorboard"], log_every=2)
    result = Trainer(opts).run()
    out = result.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dev_rows = [r for r in rows if "dev" in r]
    assert [r["step"] for r in dev_rows] == [2, 4, 6]
    best = json.loads((out / "best.json").read_text())
    values = {r["step"]: r["dev"]["nDCG@10"] for r in dev_rows}
    assert best["value"] == max(values.values()) and values[best["step"]] == best["value"]
    assert (out / "best" / "config.json").is_file() and (out / "final" / "maw_config.json").is_file()
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    info = json.loads((out / "train_config.json").read_text())
    assert info["data"]["holdout_queries"] == 4 and info["data"]["training_queries"] == 12
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
