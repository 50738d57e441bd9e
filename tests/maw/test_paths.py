"""The per-device path choice (maw/layer.py FUSED_DEVICES; benchmarks/bench_maw_paths.py): both paths
give the same model outputs, and the rule sends only statistics-free inference to the fused path."""

import pytest
import torch

from maw_reranker.maw import functional, layer as layer_module
from tests.maw.test_layer import patched
from tests.maw.test_patcher import batch


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@pytest.mark.parametrize("mode", ["uniform", "random", "learned", "gate"])
def test_fused_inference_equals_explicit(monkeypatch, arch, mode):
    model, layer = patched(arch, gating_mode=mode, depth_dim=4, maw_strength=1.0)
    if mode == "learned":
        with torch.no_grad():
            layer.gating.theta.normal_(0, 1.0)
    model.eval()
    inputs = batch()
    with torch.no_grad():
        explicit = model(**inputs).logits
        explicit_weights = layer.last_depth_weights.clone()
    monkeypatch.setattr(layer_module, "FUSED_DEVICES", frozenset({"cpu"}))
    calls = []
    original = layer_module.combine_depths
    monkeypatch.setattr(layer_module, "combine_depths", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        fused = model(**inputs).logits
    assert calls, "the fused path was not taken"
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert torch.allclose(layer.last_depth_weights, explicit_weights)


@pytest.mark.parametrize("mode", ["stat", "argmax", "router", "grpo"])
def test_modes_with_statistics_stay_explicit(monkeypatch, mode):
    model, layer = patched("bert", gating_mode=mode, depth_dim=4, maw_strength=1.0)
    model.eval()
    monkeypatch.setattr(layer_module, "FUSED_DEVICES", frozenset({"cpu"}))
    monkeypatch.setattr(layer_module, "combine_depths", lambda *a, **k: pytest.fail("fused path taken"))
    with torch.no_grad():
        model(**batch())


def test_maps_requested_stay_explicit(monkeypatch):
    from maw_reranker.maw.config import MAWConfig
    from maw_reranker.maw.patcher import patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    model = tiny_model("bert", initializer_range=0.3)
    model.set_attn_implementation("eager")  # sdpa returns no maps
    patch_model(model, MAWConfig(gating_mode="uniform", depth_dim=4, maw_strength=1.0))
    model.eval()
    monkeypatch.setattr(layer_module, "FUSED_DEVICES", frozenset({"cpu"}))
    monkeypatch.setattr(layer_module, "combine_depths", lambda *a, **k: pytest.fail("fused path taken"))
    with torch.no_grad():
        out = model(**batch(), output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers


@pytest.mark.parametrize("fused_devices,dropout,expected", [
    (frozenset({"cuda"}), 0.2, "combined"), (frozenset({"cuda"}), 0.0, "combined"),
    (frozenset({"cpu"}), 0.2, "combined"), (frozenset({"cpu"}), 0.0, "fused")])
def test_training_path_by_dropout_and_device(monkeypatch, fused_devices, dropout, expected):
    """With attention dropout (and no score bias) training combines first and drops once, on every device; without
    dropout it takes fused calls per depth only on the devices in FUSED_DEVICES (a CPU is not one of them)."""
    monkeypatch.setattr(layer_module, "FUSED_DEVICES", fused_devices)
    used = []
    monkeypatch.setattr(layer_module, "combined_attention", lambda *a, **k: used.append("combined") or
                        __import__("maw_reranker.maw.combined_attention", fromlist=["x"]).combined_attention(*a, **k))
    original = functional.combine_depths
    monkeypatch.setattr(layer_module, "combine_depths", lambda *a, **k: used.append("fused") or original(*a, **k))
    model, layer = patched("bert", gating_mode="learned", depth_dim=4, maw_strength=1.0,
                           model_kwargs=dict(attention_probs_dropout_prob=dropout))
    model.train()
    model(**batch()).logits.sum().backward()
    assert used == [expected], (dropout, used)
    assert layer.gating.theta.grad is not None


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_training_and_inference_paths_round_alike_in_bf16(arch):
    """One numeric contract on a CPU: with bf16 weights, the training path (autograd on: combined_attention, or one
    fused call per depth for DeBERTa's score bias) computes its maps in float32 and rounds once, as inference does,
    so the MAW layer's outputs agree to the last bit but for a few entries (BERT's used to differ in 29% of them)."""
    model, layer = patched(arch, gating_mode="learned", depth_dim=4, maw_strength=1.0)
    with torch.no_grad():
        layer.gating.theta.normal_(0, 1.0)
    model = model.to(torch.bfloat16).eval()
    outputs = []
    handle = layer.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach().float()))
    inputs = batch()
    with torch.no_grad():
        model(**inputs)
    model(**inputs)  # the learned weights require grad: the training path
    handle.remove()
    evaluated, trained = outputs
    valid = inputs["attention_mask"].bool()
    evaluated, trained = evaluated[valid], trained[valid]
    # At most one bf16 step apart everywhere (2^-7 relative); for BERT's combined path nearly always equal. DeBERTa's
    # fused per-depth calls sum in another order than the explicit tiles: about half its entries sit one step apart.
    assert torch.allclose(evaluated, trained, rtol=2 ** -7, atol=2 ** -7 * float(evaluated.abs().max()))
    if arch == "bert":
        differ = (evaluated != trained).float().mean()
        assert float(differ) < 0.05, float(differ)


def test_cpu_inference_never_takes_the_triton_path(monkeypatch):
    """The Triton kernels are for CUDA (and tested in the interpreter); a CPU forward takes the explicit path
    without importing triton."""
    import sys

    from maw_reranker.maw.functional import DepthInputs, explicit_maw

    inp = DepthInputs(q=[torch.zeros(1, 1, 2, 2)], k=[torch.zeros(1, 1, 2, 2)], scale=[1.0], v=torch.zeros(1, 1, 2, 2),
                      allowed=None, key_valid=torch.ones(1, 2, dtype=torch.bool))
    monkeypatch.delitem(sys.modules, "maw_reranker.maw.triton_maw", raising=False)
    assert layer_module.inference_path(inp, want_map=False) is explicit_maw
    assert "maw_reranker.maw.triton_maw" not in sys.modules
