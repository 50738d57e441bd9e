"""ModernBERT as a cross-encoder: save/load round trip, LoRA on the fused Wqkv feeding both attentions, and the
frozen-prefix split (each top layer builds its own mask and rotary embedding, local or global)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.cross_encoder.prefix import (freeze_prefix, prefix_modules, prefix_states, split_forward,
                                               top_forward, top_parameters, train_top)
from maw_reranker.cross_encoder.prefix_cache import PrefixCache
from maw_reranker.maw.config import GATING_MODES
from maw_reranker.maw.patcher import maw_layers, set_maw_strength
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
from tests.cross_encoder.test_prefix import nudged

WORDS = "the cat sat on a mat dog ran fast maw attention depth query document rerank search".split()
PAIRS = [("the cat", "the cat sat on a mat"), ("dog", "dog ran fast fast fast on the mat the cat sat"),
         ("maw depth", "attention depth query"), ("search", "rerank search document maw maw the cat"),
         ("a", "a")]
LAYERS = 3  # [global, local, global]: MAW in the last two, one local and one global


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("modernbert"), WORDS, model_type="modernbert",
                                   num_layers=LAYERS, initializer_range=0.3, hidden_dropout_prob=0.2,
                                   attention_probs_dropout_prob=0.2)


def load(path, mode: str | None, **maw) -> CrossEncoderWithMAW:
    config = None if mode is None else MAWConfig(gating_mode=mode, depth_dim=3, maw_strength=0.6, inject_last_k=2,
                                                 maw_random_seed=5, **maw)
    return nudged(CrossEncoderWithMAW.from_pretrained(path, maw=config, device="cpu"))


def test_tiny_cross_encoder_mixes_local_and_global_maw_layers(model_dir):
    model = load(model_dir, "stat")
    types = model.model.config.layer_types
    assert types == ["full_attention", "sliding_attention", "full_attention"]
    assert sorted(m.layer_index for m in maw_layers(model.model).values()) == [1, 2]
    assert model.tokenize(PAIRS)["input_ids"].shape[1] > 2 * model.model.config.sliding_window + 1


@pytest.mark.parametrize("mode", GATING_MODES)
@pytest.mark.parametrize("source", ["split", "project"])
def test_save_load_restores_identical_scores(model_dir, tmp_path, mode, source):
    model = load(model_dir, mode, depth_source=source)
    before = model.predict(PAIRS, batch_size=2)
    model.save_pretrained(tmp_path / "saved")
    restored = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", device="cpu")
    assert restored.maw_config == model.maw_config
    np.testing.assert_array_equal(restored.predict(PAIRS, batch_size=2), before)
    plain = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", maw=None, device="cpu")
    assert not maw_layers(plain.model) and not np.allclose(plain.predict(PAIRS), before)


def test_lora_on_wqkv_feeds_both_attentions_and_merges(model_dir):
    """peft has no ModernBERT default: target Wqkv (and Wo) by name. The adapted projection feeds O_orig and the
    MAW depths, so alpha = 0 is the LoRA model without MAW, and the merged copy scores the same."""
    from maw_reranker.train.lora import add_lora, has_lora, merged_copy

    model = load(model_dir, "learned")
    plain = load(model_dir, None)
    for encoder in (model, plain):
        add_lora(encoder, r=2, target_modules=["Wqkv", "Wo"])
    gen = torch.Generator().manual_seed(1)
    lora = {n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in plain.model.named_parameters() if "lora_" in n}
    with torch.no_grad():  # the same (non-zero) adapters in both
        for encoder in (model, plain):
            for name, p in encoder.model.named_parameters():
                if "lora_" in name:
                    p.copy_(lora[name.replace("base_layer.", "")])
    layer = next(iter(maw_layers(model.model).values()))
    assert has_lora(model.model) and "lora" in type(layer.base_layer.Wqkv).__module__
    before = model.predict(PAIRS)
    set_maw_strength(model.model, 0.0)
    np.testing.assert_allclose(model.predict(PAIRS), plain.predict(PAIRS), atol=1e-5)
    set_maw_strength(model.model, 0.6)
    merged = merged_copy(model)
    assert not has_lora(merged.model)
    np.testing.assert_allclose(merged.predict(PAIRS), before, atol=1e-5)
    model.model.zero_grad()
    model.model.train()
    model(**model.tokenize(PAIRS)).sum().backward()
    grads = [p.grad for n, p in layer.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


# -- the prefix split ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", (None,) + GATING_MODES)
def test_prefix_plus_top_equals_full_model_in_eval_mode(model_dir, mode):
    model = load(model_dir, mode)
    features = model.tokenize(PAIRS)
    with torch.no_grad():
        full = model(**features)
        for start in range(LAYERS):  # the top starts on a global, a local and a global layer
            torch.testing.assert_close(split_forward(model, features, start), full, atol=1e-4, rtol=0)
        assert len(model.model.model.layers) == LAYERS  # restored
        torch.testing.assert_close(model(**features), full, atol=0, rtol=0)


def test_prefix_is_embeddings_and_lower_layers_final_norm_is_top(model_dir):
    model = load(model_dir, "stat")
    backbone = model.model.model
    prefix = prefix_modules(model, 2)
    assert backbone.embeddings in prefix and backbone.layers[0] in prefix and backbone.layers[1] in prefix
    assert backbone.layers[2] not in prefix and backbone.final_norm not in prefix
    top = {n for n, _ in top_parameters(model, 2)}
    assert any(n.startswith("model.final_norm.") for n in top) and any(n.startswith("model.layers.2.") for n in top)
    assert not any(n.startswith(("model.layers.1.", "model.embeddings.")) for n in top)


@pytest.mark.parametrize("mode", [None, "stat", "learned", "router"])
def test_train_mode_cached_and_uncached_top_agree_under_one_seed(model_dir, tmp_path, mode):
    """Top in train mode (dropout on): the full model, the top on the prefix states and the top on the states read
    back from a disk cache give the same logits and gradients under one seed."""
    start = 1  # a local layer first, then a global one
    model = load(model_dir, mode)
    freeze_prefix(model, start)
    train_top(model, start)
    features = model.tokenize(PAIRS)
    with PrefixCache(tmp_path, model, start, dtype="fp32", show_progress=False) as cache:
        cache.fill(PAIRS)
        cached = cache.get(PAIRS)
    states = prefix_states(model, features, start)

    def run(step):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        logits = step()
        (logits * torch.arange(1, len(PAIRS) + 1)).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}

    full, full_grads = run(lambda: model(**features))
    top, top_grads = run(lambda: top_forward(model, states, start))
    disk, disk_grads = run(lambda: top_forward(model, cached, start))
    torch.testing.assert_close(top, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(disk, full, atol=1e-4, rtol=0)
    with torch.no_grad():
        model.eval()
        assert (model(**features) - full).abs().max() > 1e-4  # dropout was really on
    assert set(full_grads) == set(top_grads) == set(disk_grads)
    assert any(".layers.1.attn." in n for n in top_grads) and not any(".layers.0." in n for n in top_grads)
    for name in full_grads:
        torch.testing.assert_close(top_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(disk_grads[name], full_grads[name], atol=1e-4, rtol=1e-3)
