"""Device and dtype safety (issue 12, items 1-2; docs/MAW.md section 6: every tensor MAW creates takes the device and
dtype of its inputs).

A tensor created without an explicit device lands on torch's default device. Setting that to "meta" while the model
stays on the CPU turns such a tensor into a device-mismatch error on any machine, which is how a forgotten
``device=`` shows up on a GPU. Each test runs on the CPU and, when a GPU is present, on CUDA as well.
"""

import pytest
import torch

from maw_reranker.maw.config import DEPTH_SOURCES, GATING_MODES, MAWConfig
from maw_reranker.maw.patcher import maw_layers, patch_model
from maw_reranker.utils.tiny_models import TINY_ARCHITECTURES, tiny_model

DEVICES = [pytest.param("cpu"),
           pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def small_model(arch, device, dtype=torch.float32):
    # position_buckets=-1: transformers' log-bucket code makes a tensor on the default device (not MAW's doing).
    extra = {"position_buckets": -1} if arch == "deberta-v2" else {}
    if arch == "modernbert":  # its one layer local: the sliding window (2 each side) is built on the device too
        extra = {"layer_types": ["sliding_attention"]}
    model = tiny_model(arch, hidden_size=16, num_heads=2, num_layers=1, attention_probs_dropout_prob=0.1,
                       initializer_range=0.3, **extra)
    return model.to(device=device, dtype=dtype)


def inputs_on(device, size=3, length=6):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def config(mode, source):
    return MAWConfig(gating_mode=mode, depth_source=source, depth_dim=2, maw_strength=0.5)


def backbone_runs(model, inputs) -> bool:
    try:
        model(**inputs)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def layer_arguments(model, inputs):
    """The MAW layer's bound forward arguments of one (eval) pass, captured by a hook."""
    layer = next(iter(maw_layers(model).values()))
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, kw, out: captured.update(a=a, kw=kw), with_kwargs=True)
    with torch.no_grad():
        model.eval()(**inputs)
    handle.remove()
    return layer, layer.adapter.bind(captured["a"], captured["kw"])


def check_eval_and_train(model, inputs, device, dtype):
    """Eval (no autograd) and train (attention dropout on) with backward: finite outputs on the model's device, MAW
    parameters in the model's dtype there, and their gradients too."""
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.device.type == torch.device(device).type and torch.isfinite(logits).all()
    model.train()
    model.zero_grad()
    logits = model(**inputs).logits
    logits.float().sum().backward()
    assert torch.isfinite(logits).all()
    for layer in maw_layers(model).values():
        for p in layer.maw_parameters():
            assert p.dtype == dtype and p.device.type == torch.device(device).type
            if p.grad is not None:  # (hard, sampled modes give some parameters no gradient in one step)
                assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()


def check_layer_alone(layer, bound, dtype):
    """MAW's own computation (no call into the wrapped module), attention map included, in eval and in train with
    backward."""
    layer.eval()
    with torch.no_grad():
        out, _ = layer.maw_output(bound, want_map=True)
    assert torch.isfinite(out).all()
    layer.train()
    bound = dict(bound, hidden_states=bound["hidden_states"].detach().requires_grad_())
    out, a_sel = layer.maw_output(bound, want_map=True)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and a_sel.dtype == dtype
    assert torch.isfinite(bound["hidden_states"].grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("source", DEPTH_SOURCES)
@pytest.mark.parametrize("mode", GATING_MODES)
def test_nothing_lands_on_the_default_device(device, arch, source, mode):
    """Fails on the old code: `uniform` weights with no device, gating parameters created on the default device."""
    model = small_model(arch, device)
    inputs = inputs_on(device)
    with torch.device("meta"):
        # The check only means something where the unpatched backbone passes (transformers' DeBERTa makes its
        # score scale on the default device); MAW's own computation is checked alone in every case.
        backbone_ok = backbone_runs(model, inputs)
        patch_model(model, config(mode, source))
    assert backbone_ok or arch == "deberta-v2"
    layer, bound = layer_arguments(model, inputs)
    with torch.device("meta"):
        check_layer_alone(layer, bound, torch.float32)
        if backbone_ok:
            check_eval_and_train(model, inputs, device, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("source", DEPTH_SOURCES)
@pytest.mark.parametrize("mode", GATING_MODES)
def test_half_precision_model(device, dtype, arch, source, mode):
    """Fails on the old code: the `gate` MLP stays float32 in a bf16 model ("mat1 and mat2 must have the same
    dtype")."""
    model = small_model(arch, device, dtype)
    inputs = inputs_on(device)
    patch_model(model, config(mode, source))
    check_eval_and_train(model, inputs, device, dtype)
    layer, bound = layer_arguments(model, inputs)
    check_layer_alone(layer, bound, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("mode", GATING_MODES)
def test_training_step_under_bf16_autocast(device, arch, mode):
    """An fp32 model, one optimizer step with bf16 autocast: finite loss, and the MAW parameters that got a gradient
    moved."""
    model = small_model(arch, device)
    patch_model(model, config(mode, "project"))
    layer = next(iter(maw_layers(model).values()))
    with torch.no_grad():  # a non-zero start for the zero-initialized parts, so every parameter gets a gradient
        layer.maw_up.normal_(0, 0.1)
        for p in layer.gating.parameters():
            p.normal_(0, 0.1)
    before = {n: p.detach().clone() for n, p in layer.named_parameters() if not n.startswith("base_layer.")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        logits = model(**inputs_on(device)).logits
    loss = (logits.float() - 1.0).square().mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in layer.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert "maw_up" in moved and "maw_down" in moved
    if mode in ("learned", "gate", "router"):  # differentiable weights: the gating trains too
        assert any(n.startswith("gating.") for n in moved), moved
    for p in model.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
