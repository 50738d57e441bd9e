"""CrossEncoderWithMAW: save/load round trips, plain backbones, predict and rank."""

import json

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.maw.patcher import maw_layers
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

WORDS = "the cat sat on a mat dog ran fast maw attention depth query document rerank search".split()
PAIRS = [("the cat", "the cat sat on a mat"), ("dog", "dog ran fast fast fast on the mat"),
         ("maw depth", "attention depth query"), ("search", "rerank search document maw maw the cat")]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("base"), WORDS, initializer_range=0.3)


def perturb_maw(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in maw_layers(model.model).values():
            for p in layer.maw_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("mode", ["uniform", "random", "stat", "argmax", "learned", "gate", "router", "grpo"])
@pytest.mark.parametrize("source", ["split", "project"])
def test_save_load_restores_identical_scores(base_dir, tmp_path, mode, source):
    cfg = MAWConfig(gating_mode=mode, depth_source=source, depth_dim=3, maw_strength=0.6, maw_random_seed=5)
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=cfg, device="cpu")
    perturb_maw(model)
    before = model.predict(PAIRS, batch_size=2)
    model.save_pretrained(tmp_path / "saved")
    restored = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", device="cpu")  # settings not repeated
    assert restored.maw_config == cfg
    np.testing.assert_array_equal(restored.predict(PAIRS, batch_size=2), before)


def test_saved_directory_is_a_standard_hf_model(base_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(maw_strength=0.0), device="cpu")
    model.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors", "maw_config.json"} <= files
    assert not any(name.startswith(".") for name in {p.name for p in tmp_path.iterdir()})  # no temp leftovers
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert not any("base_layer" in k for k in plain.state_dict())
    unpatched = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", maw=None, device="cpu")
    # strength 0 -> the saved backbone alone gives the same scores
    np.testing.assert_allclose(unpatched.predict(PAIRS), model.predict(PAIRS), atol=1e-5)
    assert json.loads((tmp_path / "saved" / "maw_config.json").read_text())["gating_mode"] == "stat"


def test_plain_backbone_loads_with_and_without_maw(base_dir):
    plain = CrossEncoderWithMAW.from_pretrained(base_dir, device="cpu")
    assert plain.maw_config is None and not maw_layers(plain.model)
    patched = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(inject_last_k=2), device="cpu")
    assert len(maw_layers(patched.model)) == 2


def test_predict_is_independent_of_batching_and_order(base_dir):
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(maw_strength=0.5), device="cpu")
    one = model.predict(PAIRS, batch_size=1)
    many = model.predict(PAIRS, batch_size=4)
    np.testing.assert_allclose(one, many, atol=1e-5)
    rev = model.predict(PAIRS[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(one, rev, atol=1e-5)
    assert model.predict([]).shape == (0,)


def test_predict_returns_depth_weights(base_dir):
    """The reported selected depth is the one each layer used: forcing it reproduces the score, forcing another
    does not (so a report that merely agrees with its own weights cannot pass)."""
    cfg = MAWConfig(gating_mode="argmax", depth_dim=4, inject_last_k=2, maw_strength=1.0)
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=cfg, device="cpu")
    scores, depth = model.predict(PAIRS, batch_size=3, return_depth=True)
    assert sorted(depth) == [0, 1]
    for info in depth.values():
        assert info["weights"].shape == (len(PAIRS), 4)
        np.testing.assert_allclose(info["weights"].sum(-1), 1.0, atol=1e-5)
    layers = {m.layer_index: m for m in maw_layers(model.model).values()}
    changed = False
    for i, pair in enumerate(PAIRS):
        for shift, same in ((0, True), (1, False)):
            for index, layer in layers.items():
                layer.gating.forced_depth = torch.tensor([(int(depth[index]["selected"][i]) + shift) % 4])
            forced = model.predict([pair])[0]
            if same:
                assert forced == pytest.approx(float(scores[i]), abs=1e-5)
            else:
                changed |= abs(forced - float(scores[i])) > 1e-4
        for index, layer in layers.items():
            layer.gating.forced_depth = None
            assert depth[index]["weights"][i, depth[index]["selected"][i]] == 1.0  # argmax mode: one-hot
    assert changed  # the depth matters for these pairs, so the check above has teeth


def test_use_maw_false_loads_the_plain_backbone(base_dir):
    off = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(use_maw=False), device="cpu")
    assert off.maw_config is None and not maw_layers(off.model)
    plain = CrossEncoderWithMAW.from_pretrained(base_dir, maw=None, device="cpu")
    np.testing.assert_array_equal(off.predict(PAIRS), plain.predict(PAIRS))


def test_strength_changed_once_is_used_and_saved(base_dir, tmp_path):
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(maw_strength=0.6), device="cpu")
    plain = CrossEncoderWithMAW.from_pretrained(base_dir, maw=None, device="cpu").predict(PAIRS)
    assert np.abs(model.predict(PAIRS) - plain).max() > 1e-4
    model.set_maw_strength(0.0)
    assert model.maw_config.maw_strength == 0.0
    np.testing.assert_allclose(model.predict(PAIRS), plain, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    restored = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", device="cpu")
    assert restored.maw_config.maw_strength == 0.0
    np.testing.assert_allclose(restored.predict(PAIRS), plain, atol=1e-5)
    model.set_maw_strength(0.6)  # after save/load's unpatch and repatch, the layers still follow the config
    assert np.abs(model.predict(PAIRS) - plain).max() > 1e-4


def test_rank_sorts_by_score(base_dir):
    model = CrossEncoderWithMAW.from_pretrained(base_dir, device="cpu")
    docs = [d for _, d in PAIRS]
    ranked = model.rank("the cat", docs, top_k=3, return_documents=True)
    assert len(ranked) == 3
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    scores = model.predict([("the cat", d) for d in docs])
    assert ranked[0]["corpus_id"] == int(np.argmax(scores)) and ranked[0]["text"] == docs[ranked[0]["corpus_id"]]


def test_bf16_autocast_runs_and_stays_close(base_dir):
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(), device="cpu")
    fp32 = model.predict(PAIRS)
    bf16 = model.predict(PAIRS, precision="bf16")
    np.testing.assert_allclose(bf16, fp32, atol=0.1)
    with pytest.raises(ValueError, match="precision"):
        model.predict(PAIRS, precision="int3")


def test_predict_takes_one_pair_as_sentence_transformers_does(base_dir):
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=MAWConfig(depth_dim=2), device="cpu")
    many = model.predict(PAIRS)
    one = model.predict(PAIRS[1])
    assert np.ndim(one) == 0 and one == pytest.approx(many[1], abs=1e-5)  # alone: other padding
    assert model.predict(list(PAIRS[1])) == one  # a list of two strings is one pair too
    sig = model.predict(PAIRS[1], activation="sigmoid")
    assert sig == pytest.approx(1 / (1 + np.exp(-one)), abs=1e-6)
    score, depth = model.predict(PAIRS[0], return_depth=True)
    assert np.ndim(score) == 0 and all(d["weights"].shape == (1, 2) for d in depth.values())
    with pytest.raises(ValueError, match="activation"):
        model.predict(PAIRS[0], activation="softplus")
    ranked = model.rank("the cat", [d for _, d in PAIRS], activation="sigmoid")
    assert set(ranked[0]) == {"corpus_id", "score"} and 0 < ranked[0]["score"] < 1
