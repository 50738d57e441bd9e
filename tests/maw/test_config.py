"""MAWConfig's public contract (docs/MAW.md section 8) and its one home on a patched model."""

import pytest
import torch

from maw_reranker.maw.config import MAWConfig
from maw_reranker.maw.functional import stat_scores
from maw_reranker.maw.patcher import maw_layers, patch_model, set_maw_strength, unpatch_model
from maw_reranker.utils.tiny_models import tiny_model

from tests.maw.test_patcher import batch


def test_use_maw_false_is_the_unpatched_baseline():
    cfg = MAWConfig(use_maw=False)
    assert MAWConfig().use_maw and MAWConfig.from_dict(cfg.to_dict()) == cfg
    model = tiny_model("bert", initializer_range=0.3)
    with torch.no_grad():
        expected = model(**batch()).logits
        assert patch_model(model, cfg) is model
        got = model(**batch()).logits
    assert not maw_layers(model) and getattr(model, "maw_config", None) is None
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="use_maw"):
        MAWConfig(use_maw="no")


def test_old_saved_configs_without_use_maw_still_load():
    data = MAWConfig().to_dict()
    del data["use_maw"]
    assert MAWConfig.from_dict(data).use_maw


def test_layers_and_gating_read_the_models_config():
    cfg = MAWConfig(gating_mode="stat", maw_strength=0.5, depth_dim=3, inject_last_k=2)
    model = tiny_model("bert", initializer_range=0.3)
    with torch.no_grad():
        plain = model(**batch()).logits
    patch_model(model, cfg)
    layers = list(maw_layers(model).values())
    assert model.maw_config == cfg and model.maw_config is not cfg  # the model's own copy
    for layer in layers:
        assert layer.maw_config is model.maw_config and layer.gating.config is model.maw_config

    set_maw_strength(model, 0.0)  # one change, seen everywhere
    assert cfg.maw_strength == 0.5  # the caller's object is untouched
    assert model.maw_config.maw_strength == 0.0
    assert all(layer.maw_strength == 0.0 and "strength=0.0" in repr(layer) for layer in layers)
    with torch.no_grad():
        assert torch.allclose(model(**batch()).logits, plain, atol=1e-5)

    model.maw_config.stat_sharpness = 50.0  # gating reads its settings at call time, too
    gate = layers[0].gating
    stats = torch.rand(2, 3, 4)
    assert torch.allclose(gate(2, stats, None), torch.softmax(50.0 * stat_scores(stats), -1))

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_maw_strength(model, 1.5)
    unpatch_model(model)
    with pytest.raises(ValueError, match="not patched"):
        set_maw_strength(model, 0.1)


def test_one_config_object_serves_two_models_independently():
    cfg = MAWConfig(maw_strength=0.5)
    a, b = tiny_model("bert"), tiny_model("bert")
    patch_model(a, cfg)
    patch_model(b, cfg)
    set_maw_strength(a, 0.1)
    assert b.maw_config.maw_strength == 0.5
    assert all(layer.maw_strength == 0.5 for layer in maw_layers(b).values())
