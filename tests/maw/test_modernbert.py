"""ModernBERT (fused Wqkv, rotary embeddings with a local and a global base, sliding-window attention on local
layers): every MAW depth sees its layer's rotary embedding and mask. The tiny model's layers are [global, local], the
local window (2 tokens each side) is shorter than the test sequences."""

import logging

import pytest
import torch

from maw_reranker.maw import adapters_modernbert
from maw_reranker.maw.config import GATING_MODES, MAWConfig
from maw_reranker.maw.patcher import maw_layers, patch_model, set_maw_strength
from maw_reranker.maw.reference import reference_attention_5d, reference_maw, reference_stat_weights
from maw_reranker.utils.tiny_models import tiny_model

from tests.maw.test_layer import bound_arguments
from tests.maw.test_patcher import batch

GLOBAL, LOCAL = 0, 1
RADIUS = 2  # local_attention=4: |i - j| <= 2


def modernbert(impl="sdpa"):
    model = tiny_model("modernbert", initializer_range=0.3)
    model.set_attn_implementation(impl)
    return model


def test_tiny_model_has_a_local_and_a_global_layer():
    model = modernbert()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert model.config.sliding_window == RADIUS and batch()["input_ids"].shape[1] > 2 * RADIUS + 1
    thetas = {t: p["rope_theta"] for t, p in model.config.rope_parameters.items()}
    assert thetas["full_attention"] != thetas["sliding_attention"]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("layer", [LOCAL, GLOBAL], ids=["local", "global"])
@pytest.mark.parametrize("mode", GATING_MODES)
def test_zero_strength_is_the_unpatched_model(impl, layer, mode):
    """alpha = 0 reproduces the logits on a local and on a global layer; alpha > 0 changes them."""
    model = modernbert(impl)
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs).logits
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.0, depth_dim=3, layers=[layer]))
        got = model(**inputs).logits
        set_maw_strength(model, 0.8)
        changed = model(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (changed - expected).abs().max() > 1e-4


@pytest.mark.parametrize("source,depth", [("split", 1), ("project", 3)])
@pytest.mark.parametrize("layers", [[LOCAL], [GLOBAL], [GLOBAL, LOCAL]], ids=["local", "global", "both"])
def test_depths_equal_to_the_head_give_the_unpatched_model_at_full_strength(source, depth, layers):
    """One split depth, or fresh project depths, are the pretrained head: alpha = 1 is then the unpatched model only
    if MAW uses the layer's own rotary embedding (local or global base) and its own mask (window on local layers)."""
    model = modernbert()
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs).logits
        patch_model(model, MAWConfig(gating_mode="stat", maw_strength=1.0, depth_dim=depth, depth_source=source,
                                     layers=layers))
        got = model(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("source", ["split", "project"])
def test_every_depth_is_a_rotary_attention(source):
    """Rotary attention depends on relative positions only, so shifting all positions changes no score. Each depth
    keeps that property only if it holds whole rotary pairs (split) and its learned delta is rotated too (project)."""
    model = modernbert()
    patch_model(model, MAWConfig(gating_mode="stat", maw_strength=1.0, depth_dim=3, depth_source=source,
                                 layers=[GLOBAL, LOCAL]))
    if source == "project":
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in maw_layers(model).values():
                layer.maw_up.copy_(torch.randn(layer.maw_up.shape, generator=gen))
    inputs = batch()
    positions = torch.arange(inputs["input_ids"].shape[1]).expand_as(inputs["input_ids"])
    with torch.no_grad():
        plain = model(**inputs, position_ids=positions).logits
        shifted = model(**inputs, position_ids=positions + 7).logits
    assert torch.allclose(plain, shifted, atol=1e-4), (plain - shifted).abs().max()


def test_split_depths_take_whole_rotary_pairs():
    model = modernbert()  # head width 8: 4 rotary pairs
    patch_model(model, MAWConfig(depth_dim=3, layers=[LOCAL]))
    layer = next(iter(maw_layers(model).values()))
    assert layer.feature_slices == [(0, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="half the head width"):
        patch_model(modernbert(), MAWConfig(depth_dim=5))


@pytest.mark.parametrize("source", ["split", "project"])
@pytest.mark.parametrize("layer_index", [LOCAL, GLOBAL], ids=["local", "global"])
def test_fast_path_matches_the_reference_and_local_maps_stay_in_the_window(source, layer_index):
    """O_maw equals the plain reference; on the local layer every depth's map is zero outside the window (and on
    padded keys), on the global layer it is not."""
    model = modernbert()
    patch_model(model, MAWConfig(gating_mode="stat", depth_dim=3, depth_source=source, maw_strength=1.0,
                                 layers=[layer_index]))
    layer = next(iter(maw_layers(model).values()))
    if source == "project":
        with torch.no_grad():
            layer.maw_up.normal_(0, 0.5)
    inputs = batch()
    bound = bound_arguments(model, layer, inputs)
    with torch.no_grad():
        fast, _ = layer.maw_output(bound)
        inp, _ = layer.depth_inputs(bound)
        ref, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    ref = layer.adapter.merge_heads(ref)
    assert torch.allclose(fast.double(), ref, atol=1e-4), (fast.double() - ref).abs().max()
    length = inputs["input_ids"].shape[1]
    pos = torch.arange(length)
    outside = (pos[:, None] - pos[None, :]).abs() > RADIUS
    for b in range(len(inputs["input_ids"])):
        a5, valid = reference_attention_5d(inp, b)  # [H, n, n, D] over the valid tokens
        far = outside[valid][:, valid]
        mass = a5[:, far].abs().max()
        assert (mass == 0) if layer_index == LOCAL else (mass > 0)
        assert torch.allclose(a5.sum(-2), torch.ones_like(a5.sum(-2)))


def test_window_is_applied_when_transformers_passes_no_dense_mask():
    """Flash attention gets a 2D padding mask (or none) and the window as a number: MAW's mask is the same as the
    4D one sdpa gets."""
    model = modernbert()
    patch_model(model, MAWConfig(depth_dim=3, layers=[LOCAL]))
    layer = next(iter(maw_layers(model).values()))
    inputs = batch()
    bound = bound_arguments(model, layer, inputs)
    shape = (3, inputs["input_ids"].shape[1])
    dense = layer.adapter.allowed_mask(bound, *shape)
    from_2d = layer.adapter.allowed_mask(dict(bound, attention_mask=inputs["attention_mask"]), *shape)
    assert bound["attention_mask"].dim() == 4 and torch.equal(dense, from_2d)
    unpadded = layer.adapter.allowed_mask(dict(bound, attention_mask=None), *shape)
    assert unpadded.all(-1).sum() == 0 and unpadded[0, 0].sum(-1).tolist() == [3, 4, 5, 5, 5, 5, 5, 5, 5, 4, 3]


@pytest.mark.parametrize("mode", ["uniform", "stat"])
@pytest.mark.parametrize("layer_index", [LOCAL, GLOBAL], ids=["local", "global"])
def test_attentions_are_the_blend_on_eager_models(mode, layer_index):
    """The reported map is (1 - alpha) A_orig + alpha A_sel (A_sel from the reference); on the local layer it stays
    inside the window."""
    model = modernbert("eager")
    inputs = batch()
    with torch.no_grad():
        plain = model(**inputs, output_attentions=True).attentions
        patch_model(model, MAWConfig(gating_mode=mode, maw_strength=0.5, depth_dim=3, layers=[layer_index]))
        layer = next(iter(maw_layers(model).values()))
        captured = {}
        layer.register_forward_hook(lambda m, a, kw, out: captured.update(a=a, kw=kw), with_kwargs=True)
        blended = model(**inputs, output_attentions=True).attentions
        inp, _ = layer.depth_inputs(layer.adapter.bind(captured["a"], captured["kw"]))
        weights = ((lambda b, s: torch.full((3,), 1 / 3)) if mode == "uniform"
                   else (lambda b, s: reference_stat_weights(s, 2.5)))
        _, ref_map, _ = reference_maw(inp, weights)
    assert len(blended) == len(plain) == 2
    if layer_index == LOCAL:
        assert torch.allclose(blended[GLOBAL], plain[GLOBAL])  # unpatched layer untouched
    expected = 0.5 * plain[layer_index].double() + 0.5 * ref_map
    assert torch.allclose(blended[layer_index].double(), expected, atol=1e-5)
    length = inputs["input_ids"].shape[1]
    pos = torch.arange(length)
    outside = (pos[:, None] - pos[None, :]).abs() > RADIUS
    valid_rows = inputs["attention_mask"].bool()[:, None, :, None]
    far = blended[layer_index].masked_select(outside & valid_rows).abs().max()
    assert (far == 0) if layer_index == LOCAL else (far > 0)


def test_unpadded_implementations_fall_back_to_the_padded_path_and_say_so_once(monkeypatch, caplog):
    """Under flash attention (2D masks, unpadding inside the kernel) patched layers run sdpa on the padded batch: the
    same scores as an sdpa model, at alpha = 0 and above, with one log line however many layers and calls."""
    monkeypatch.setattr(adapters_modernbert, "_fallback_logged", set())
    inputs = batch()
    reference = modernbert()
    patch_model(reference, MAWConfig(gating_mode="stat", maw_strength=0.0, depth_dim=3, layers=[GLOBAL, LOCAL]))
    model = modernbert()
    patch_model(model, MAWConfig(gating_mode="stat", maw_strength=0.0, depth_dim=3, layers=[GLOBAL, LOCAL]))
    # Every layer is patched, so no flash kernel is needed on this machine: only the masks transformers builds for
    # flash (2D padding masks) and the fallback run.
    model.config._attn_implementation = "flash_attention_2"
    with torch.no_grad(), caplog.at_level(logging.INFO, logger=adapters_modernbert.__name__):
        for strength in (0.0, 0.7):
            set_maw_strength(model, strength)
            set_maw_strength(reference, strength)
            got = model(**inputs).logits
            model(**inputs)
            expected = reference(**inputs).logits
            assert torch.allclose(got, expected, atol=1e-5), (strength, (got - expected).abs().max())
    lines = [r for r in caplog.records if r.name == adapters_modernbert.__name__]
    assert len(lines) == 1 and "flash_attention_2" in lines[0].getMessage()
    with torch.no_grad(), pytest.raises(ValueError, match="packed"):
        model(**inputs, cu_seq_lens_q=torch.tensor([0, 11]))


def test_dropout_reaches_the_depths_and_wo_is_applied_once():
    """attention_dropout is ModernBERT's name for the attention-probability dropout: MAW's depths use it in
    training mode; in eval mode the patched module's output is Wo applied to the blend."""
    model = tiny_model("modernbert", initializer_range=0.3, attention_probs_dropout_prob=0.5)
    patch_model(model, MAWConfig(gating_mode="uniform", maw_strength=1.0, depth_dim=3, layers=[LOCAL]))
    layer = next(iter(maw_layers(model).values()))
    bound = bound_arguments(model, layer, batch())
    layer.train()
    assert layer.attention_dropout() == 0.5
    torch.manual_seed(0)
    first = layer.maw_output(bound)[0]
    torch.manual_seed(1)
    assert not torch.allclose(first, layer.maw_output(bound)[0], atol=1e-3)
    layer.eval()
    with torch.no_grad():
        out, _ = layer(**bound)
        o_maw, _ = layer.maw_output(bound)
    assert torch.allclose(out, layer.base_layer.Wo(o_maw), atol=1e-6)


def test_masks_and_modules_maw_cannot_read_are_refused():
    """A flex-attention BlockMask carries no readable padding; transformers 4's ModernBertAttention (no
    position_embeddings argument: it rotates by itself and gets unpadded inputs under flash attention) is refused
    when patching, not mis-patched."""
    from maw_reranker.maw.adapters import adapter_for

    model = modernbert()
    patch_model(model, MAWConfig(depth_dim=3, layers=[LOCAL]))
    layer = next(iter(maw_layers(model).values()))
    bound = bound_arguments(model, layer, batch())
    with pytest.raises(ValueError, match="cannot read a object attention mask"):
        layer.adapter.allowed_mask(dict(bound, attention_mask=object()), 3, 11)

    class ModernBertAttention(torch.nn.Module):  # the transformers 4.x signature
        def forward(self, hidden_states, output_attentions=False, **kwargs):
            return hidden_states

    with pytest.raises(ValueError, match="transformers >= 5"):
        adapter_for(ModernBertAttention())
