"""Patching real (tiny, random) Hugging Face models: alpha=0 identity, attentions, layer selection, errors."""

import pytest
import torch

from maw_reranker.maw.config import GATING_MODES, MAWConfig
from maw_reranker.maw.patcher import (find_attention_modules, load_maw_state_dict, maw_layers, maw_state_dict,
                                      patch_model, set_maw_strength, unpatch_model)
from maw_reranker.maw.reference import reference_maw, reference_stat_weights
from maw_reranker.utils.tiny_models import TINY_ARCHITECTURES, tiny_model


def batch(seed=0, size=3, length=11):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def valid_logits(model, inputs, **kw):
    return model(**inputs, **kw).logits


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("mode", GATING_MODES)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("phase", ["eval", "train"])
def test_zero_strength_reproduces_unpatched_logits(arch, mode, impl, phase):
    """alpha = 0 is the unpatched model under every attention implementation, in eval (the fused no-grad path) and
    in training with autograd (the per-depth fused-attention path, whose NaN on empty rows 0 * NaN would leak)."""
    model = tiny_model(arch, initializer_range=0.3)
    model.set_attn_implementation(impl)
    model.train(phase == "train")
    inputs = batch()
    with torch.set_grad_enabled(phase == "train"):
        expected = valid_logits(model, inputs)
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.0, depth_dim=3, inject_last_k=2))
        got = valid_logits(model, inputs)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not torch.isnan(got).any()
    if phase == "train":
        got.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# DeBERTa-v3's released configs (e.g. microsoft/deberta-v3-base), scaled down: log-bucketed relative positions, keys
# shared with the position projections, LayerNorm on the relative embeddings.
DEBERTA_V3 = dict(relative_attention=True, position_buckets=256, max_relative_positions=-1,
                  pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                  position_biased_input=False, type_vocab_size=0)


@pytest.mark.parametrize("mode", GATING_MODES)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_deberta_v3_config_patches_with_zero_strength_identity(mode, impl):
    model = tiny_model("deberta-v2", initializer_range=0.3, **DEBERTA_V3)
    model.set_attn_implementation(impl)
    inputs = batch()
    with torch.no_grad():
        expected = valid_logits(model, inputs)
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.0, depth_dim=3, inject_last_k=2))
        assert len(maw_layers(model)) == 2
        got = valid_logits(model, inputs)
        set_maw_strength(model, 0.8)
        changed = valid_logits(model, inputs)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (changed - expected).abs().max() > 1e-4


@pytest.mark.parametrize("mode", GATING_MODES)
def test_xlm_roberta_under_its_default_sdpa(mode):
    """XLM-RoBERTa as loaded (transformers picks sdpa): patched, alpha = 0 is the unpatched model."""
    model = tiny_model("xlm-roberta", initializer_range=0.3)
    assert model.config._attn_implementation == "sdpa"
    inputs = batch()
    with torch.no_grad():
        expected = valid_logits(model, inputs)
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.0, depth_dim=3, inject_last_k=2))
        got = valid_logits(model, inputs)
    assert type(next(iter(maw_layers(model).values()))).__name__ == "MAWXLMRobertaSelfAttention"
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_positive_strength_changes_scores(arch):
    model = tiny_model(arch, initializer_range=0.3)
    inputs = batch()
    with torch.no_grad():
        expected = valid_logits(model, inputs)
        patch_model(model, MAWConfig(gating_mode="stat", maw_strength=0.8, depth_dim=4))
        got = valid_logits(model, inputs)
    assert (got - expected).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("source", ["split", "project"])
def test_layer_fast_path_matches_reference(arch, depth, source):
    model = tiny_model(arch, initializer_range=0.3)
    patch_model(model, MAWConfig(gating_mode="stat", depth_dim=depth, depth_source=source, maw_strength=1.0))
    layer = next(iter(maw_layers(model).values()))
    if source == "project":  # make the depths differ
        with torch.no_grad():
            layer.maw_up.normal_(0, 0.5)
    captured = {}
    layer.register_forward_hook(lambda m, a, kw, out: captured.update(args=a, kwargs=kw, out=out), with_kwargs=True)
    with torch.no_grad():
        model(**batch())
        bound = layer.adapter.bind(captured["args"], captured["kwargs"])
        fast, _ = layer.maw_output(bound)
        inp, _ = layer.depth_inputs(bound)
        ref, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    valid = inp.key_valid.unsqueeze(-1)
    ref = layer.adapter.merge_heads(ref)
    assert torch.allclose((fast * valid).double(), ref * valid, atol=1e-4)


def capture_layer_arguments(layer):
    captured = {}
    layer.register_forward_hook(lambda m, a, kw, out: captured.update(args=a, kwargs=kw), with_kwargs=True)
    return captured


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@pytest.mark.parametrize("mode", ["uniform", "stat"])
def test_attentions_are_the_blend_on_eager_models(arch, mode):
    """The reported map is (1 - alpha) A_orig + alpha A_sel with A_sel from the plain reference (padded query rows
    of A_sel are zero), so a wrong A_sel (e.g. uniform over the valid keys) fails."""
    model = tiny_model(arch, initializer_range=0.3)
    model.set_attn_implementation("eager")
    inputs = batch()
    with torch.no_grad():
        plain = model(**inputs, output_attentions=True).attentions
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.0, depth_dim=3))
        same = model(**inputs, output_attentions=True).attentions
        set_maw_strength(model, 0.5)
        layer = next(iter(maw_layers(model).values()))
        captured = capture_layer_arguments(layer)
        blended = model(**inputs, output_attentions=True).attentions
        inp, _ = layer.depth_inputs(layer.adapter.bind(captured["args"], captured["kwargs"]))
        weights = ((lambda b, s: torch.full((3,), 1 / 3)) if mode == "uniform"
                   else (lambda b, s: reference_stat_weights(s, 2.5)))
        _, ref_map, _ = reference_maw(inp, weights)
    assert len(same) == len(plain) == 2
    assert torch.allclose(same[-1], plain[-1], atol=1e-6)
    assert torch.allclose(blended[0], plain[0])  # unpatched layer untouched
    expected = 0.5 * plain[-1].double() + 0.5 * ref_map
    assert torch.allclose(blended[-1].double(), expected, atol=1e-5), (blended[-1] - expected).abs().max()


def test_attentions_still_recorded_when_patched_after_a_forward():
    model = tiny_model("bert")
    model.set_attn_implementation("eager")
    inputs = batch()
    with torch.no_grad():
        model(**inputs, output_attentions=True)  # installs transformers' recording hooks
        patch_model(model, MAWConfig(maw_strength=0.3))
        out = model(**inputs, output_attentions=True)
    assert len(out.attentions) == 2


def test_layer_selection_and_unpatch():
    model = tiny_model("bert", num_layers=4)
    patch_model(model, MAWConfig(inject_last_k=2))
    assert sorted(m.layer_index for m in maw_layers(model).values()) == [2, 3]
    removed = unpatch_model(model)
    assert len(removed) == 2 and not maw_layers(model)
    patch_model(model, MAWConfig(layers=[0, -1]))
    assert sorted(m.layer_index for m in maw_layers(model).values()) == [0, 3]
    with pytest.raises(ValueError, match="already patched"):
        patch_model(model, MAWConfig())
    unpatch_model(model)
    with pytest.raises(ValueError, match="out of range"):
        patch_model(model, MAWConfig(layers=[7]))
    with pytest.raises(ValueError, match="only 4 layers"):
        patch_model(model, MAWConfig(inject_last_k=5))


def test_wrapper_reuses_original_weights_and_is_drop_in():
    model = tiny_model("bert")
    original = model.bert.encoder.layer[1].attention.self
    patch_model(model, MAWConfig())
    wrapper = model.bert.encoder.layer[1].attention.self
    assert wrapper.base_layer is original
    assert isinstance(wrapper, type(original))
    assert "base_layer" not in "".join(maw_state_dict(model))


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(ValueError, match="supported architectures are .*bert.*deberta-v2"):
        patch_model(model, MAWConfig())
    with pytest.raises(ValueError):
        find_attention_modules(torch.nn.Linear(2, 2))


def test_maw_state_dict_round_trip_and_mismatch():
    a, b = tiny_model("bert"), tiny_model("bert")
    cfg = MAWConfig(gating_mode="gate", depth_source="project", depth_dim=2)
    patch_model(a, cfg)
    patch_model(b, cfg)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.1)
    state = maw_state_dict(a)
    load_maw_state_dict(b, state)
    for key, value in maw_state_dict(b).items():
        assert torch.equal(value, state[key])
    with pytest.raises(ValueError, match="missing"):
        load_maw_state_dict(b, {})
