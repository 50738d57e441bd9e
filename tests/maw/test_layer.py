"""The MAW layer itself: its training path against the reference, project mode's start, dropout and padded rows
across paths, attention maps requested through the config, and what the layer refuses."""

import math

import pytest
import torch

from maw_reranker.maw.config import GATING_MODES, MAWConfig
from maw_reranker.maw.gating import DepthGating
from maw_reranker.maw.patcher import maw_layers, patch_model
from maw_reranker.maw.reference import reference_maw, reference_stat_weights
from maw_reranker.utils.tiny_models import TINY_ARCHITECTURES, tiny_model

from tests.maw.test_patcher import batch


def patched(arch="bert", **maw):
    model = tiny_model(arch, initializer_range=0.3, **maw.pop("model_kwargs", {}))
    patch_model(model, MAWConfig(**maw))
    return model, next(iter(maw_layers(model).values()))


def bound_arguments(model, layer, inputs):
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, kw, out: captured.update(a=a, kw=kw), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return layer.adapter.bind(captured["a"], captured["kw"])


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "modernbert"])  # modernbert: its local (windowed) layer
@pytest.mark.parametrize("source", ["split", "project"])
@pytest.mark.parametrize("mode", ["stat", "argmax", "learned"])
def test_training_path_matches_reference(arch, source, mode):
    """With autograd on (the per-depth fused-attention path), O_maw equals the plain reference, and gradients flow."""
    model, layer = patched(arch, gating_mode=mode, depth_source=source, depth_dim=3, maw_strength=1.0,
                           per_head=mode == "learned")
    with torch.no_grad():
        if source == "project":  # make the depths differ
            layer.maw_up.normal_(0, 0.5)
        if mode == "learned":
            layer.gating.theta.normal_(0, 1.0)
    bound = bound_arguments(model, layer, batch())
    bound["hidden_states"] = bound["hidden_states"].detach().requires_grad_()
    layer.train()
    out, _ = layer.maw_output(bound)
    assert out.requires_grad
    inp, _ = layer.depth_inputs(bound)
    with torch.no_grad():
        if mode == "learned":
            w = torch.softmax(layer.gating.theta.view(inp.v.shape[1], 3), -1)
            ref, _, _ = reference_maw(inp, lambda b, s: w)
        elif mode == "stat":
            ref, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
        else:
            ref, _, _ = reference_maw(inp, lambda b, s: torch.nn.functional.one_hot(
                reference_stat_weights(s, 2.5).argmax(), 3))
    ref = layer.adapter.merge_heads(ref)
    assert torch.allclose(out.double(), ref, atol=1e-4), (out.double() - ref).abs().max()
    out.sum().backward()
    assert bound["hidden_states"].grad.abs().sum() > 0


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("mode", GATING_MODES)
def test_project_mode_starts_at_the_pretrained_model(arch, mode):
    """Zero up-projections: every depth equals the pretrained head, so even alpha = 1 gives the unpatched scores."""
    model = tiny_model(arch, initializer_range=0.3)
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs).logits
        patch_model(model, MAWConfig(gating_mode=mode, depth_source="project", depth_dim=3, maw_strength=1.0))
        got = model(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_project_down_projection_has_lora_fan_in():
    """LoRA initializes each down-projection like nn.Linear(hidden, rank): uniform in +-1/sqrt(hidden) (std
    0.091 at hidden 40); a fan-in of the rank would give std 0.29."""
    model, layer = patched("bert", depth_source="project", depth_rank=4, depth_dim=8,
                           model_kwargs=dict(hidden_size=40, num_heads=4))
    down = layer.maw_down.detach()
    bound = 1 / math.sqrt(40)
    assert down.abs().max() <= bound
    assert abs(down.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
    for which in range(2):
        assert not torch.equal(down[which, 0], down[which, 1])  # each depth gets its own draw


def test_attentions_requested_through_the_config():
    """config.output_attentions=True with no keyword: one map per layer, the patched one blended as with the keyword."""
    model = tiny_model("bert", initializer_range=0.3)
    model.set_attn_implementation("eager")
    patch_model(model, MAWConfig(gating_mode="uniform", maw_strength=0.5, depth_dim=3))
    inputs = batch()
    with torch.no_grad():
        by_keyword = model(**inputs, output_attentions=True).attentions
        model.config.output_attentions = True
        by_config = model(**inputs).attentions
    assert len(by_config) == len(by_keyword) == 2
    for a, b in zip(by_config, by_keyword):
        assert torch.allclose(a, b)


def dropout_layer():
    model, layer = patched("bert", gating_mode="uniform", depth_dim=3, maw_strength=1.0,
                           model_kwargs=dict(attention_probs_dropout_prob=0.5))
    return layer, bound_arguments(model, layer, batch())


def test_dropout_does_not_depend_on_autograd():
    """In training mode, MAW's attention dropout is the same with and without autograd (same seed, same output),
    and present in both (two seeds differ)."""
    layer, bound = dropout_layer()
    layer.train()
    outputs = {}
    for grad in (False, True):
        for seed in (0, 1):
            torch.manual_seed(seed)
            with torch.set_grad_enabled(grad):
                x = bound["hidden_states"].detach().requires_grad_(grad)
                outputs[grad, seed] = layer.maw_output(dict(bound, hidden_states=x))[0].detach()
    assert torch.allclose(outputs[False, 0], outputs[True, 0], atol=1e-6)
    assert not torch.allclose(outputs[False, 0], outputs[False, 1], atol=1e-3)
    layer.eval()  # and none at evaluation
    with torch.no_grad():
        assert torch.equal(layer.maw_output(bound)[0], layer.maw_output(bound)[0])


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "modernbert"])
def test_padded_query_rows_agree_between_paths(arch):
    """The no-grad path and the autograd path give the same O_maw and A_sel everywhere, padded rows included (zero)."""
    model, layer = patched(arch, gating_mode="stat", depth_dim=3, maw_strength=1.0)
    bound = bound_arguments(model, layer, batch())
    with torch.no_grad():
        fast, fast_map = layer.maw_output(bound, want_map=True)
    x = bound["hidden_states"].detach().requires_grad_()
    slow, slow_map = layer.maw_output(dict(bound, hidden_states=x), want_map=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast_map, slow_map, atol=1e-5)
    padded = ~batch()["attention_mask"].bool()
    assert padded.any() and fast[padded].abs().max() == 0


def test_kv_cache_is_refused():
    """A cache would make MAW's keys differ from the original's; the layer says so instead of ignoring it."""
    from transformers import DynamicCache

    model, layer = patched("bert")
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="cache"):
        layer(x, cache=DynamicCache())


def test_stale_controls_are_gone():
    """Removed: DepthGating.log_prob (GRPO reads last_log_prob), policy_mode="greedy" (grpo samples in training and
    takes the argmax in eval), last_hard (never read)."""
    gate = DepthGating(MAWConfig(gating_mode="grpo", depth_dim=4), 8, 2)
    assert not hasattr(gate, "log_prob")
    assert not hasattr(gate, "policy_mode") and not hasattr(gate, "last_hard")


@pytest.mark.parametrize("arch,dropout", [("bert", 0.3), ("deberta-v2", 0.0), ("deberta-v2", 0.3)])
def test_training_saves_at_most_two_maps_per_depth(monkeypatch, arch, dropout):
    """What the training path saves for backward: at most 2 map-sized tensors per depth (before: 3 per depth for
    BERT with attention dropout on a CPU, about 6 for DeBERTa's bias). BERT with dropout takes the combined path
    (it keeps one boolean mask); for DeBERTa the recomputed fused path gives the same output and gradients as saving
    would, dropout included."""
    from maw_reranker.maw import functional

    extra = {"position_buckets": -1} if arch == "deberta-v2" else {}
    model, layer = patched(arch, gating_mode="learned", depth_dim=3, maw_strength=1.0,
                           model_kwargs=dict(attention_probs_dropout_prob=dropout, **extra))
    with torch.no_grad():
        layer.gating.theta.normal_(0, 1.0)
    inputs = batch(size=3, length=48)
    bound = bound_arguments(model, layer, inputs)
    layer.train()
    one_map = 3 * 4 * 48 * 48 * 4  # bytes of one float32 attention map of this batch
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def run():
        torch.manual_seed(0)
        x = bound["hidden_states"].detach().requires_grad_()
        out, _ = layer.maw_output(dict(bound, hidden_states=x))
        grads = torch.autograd.grad((out * torch.arange(out.shape[-1])).sum(), [x, layer.gating.theta])
        return out.detach(), grads

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(0)
        layer.maw_output(dict(bound, hidden_states=bound["hidden_states"].detach().requires_grad_()))
    maps = sum(n for n in saved.values() if n >= one_map / 2) / one_map
    assert maps <= 2 * 3, maps
    out, grads = run()
    monkeypatch.setattr(functional, "depth_attention", functional._depth_attention)  # save instead of recompute
    out_saved, grads_saved = run()
    assert torch.allclose(out, out_saved, atol=1e-6)
    for g, h in zip(grads, grads_saved):
        assert torch.allclose(g, h, atol=1e-5)


@pytest.mark.parametrize("mode", ["argmax", "grpo", "forced"])
def test_attention_dropout_reaches_sampled_and_forced_depths(mode):
    """In training mode with attention dropout, one-hot depths (argmax, GRPO's samples, forced depths: the per-depth
    path) are dropped out too: the output differs from the same depths without dropout (eval mode, forced)."""
    model, layer = patched("bert", gating_mode="stat" if mode == "forced" else mode, depth_dim=3, maw_strength=1.0,
                           model_kwargs=dict(attention_probs_dropout_prob=0.5))
    bound = bound_arguments(model, layer, batch())
    if mode == "forced":
        layer.gating.forced_depth = torch.tensor([2, 0, 2])
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        dropped = layer.maw_output(bound)[0]
    depths = layer.last_selected_depth.clone()
    assert layer.gating.last_weights.max(-1).values.eq(1).all()  # one-hot: the per-depth path
    layer.eval()
    layer.gating.forced_depth = depths
    with torch.no_grad():
        plain = layer.maw_output(bound)[0]
    valid = batch()["attention_mask"].bool()
    assert not torch.allclose(dropped[valid], plain[valid], atol=1e-3)


@pytest.mark.parametrize("source", ["split", "project"])
def test_depths_reach_the_training_path_as_one_tensor(source):
    """Depths of one width are one [B, H, D, L, w] tensor (split: a view of the heads; project: the heads plus
    every delta, made at once), so backward has no per-depth select, slice or stack, whose gradients would each be
    zero-filled at the size of q or of the deltas (73% of a cached `project` training step before)."""
    from tests.maw.test_combined_attention import _graph_nodes

    counts = {}
    for depth in (2, 4):  # the tiny models' heads are 8 wide: equal widths
        model, layer = patched("bert", gating_mode="learned", depth_source=source, depth_dim=depth, maw_strength=1.0)
        bound = bound_arguments(model, layer, batch())
        bound["hidden_states"] = bound["hidden_states"].detach().requires_grad_()
        layer.train()
        inp, _ = layer.depth_inputs(bound)
        assert inp.q_stack is not None and inp.q_stack.shape[2] == depth
        if source == "split":
            assert inp.q_stack.data_ptr() == inp.q[0].data_ptr()  # a view of the heads, not a copy
        out, _ = layer.maw_output(bound)
        names = _graph_nodes(out)
        counts[depth] = sorted(n for n in names if n.startswith(("Stack", "Slice", "Select", "CopySlices", "Split")))
    assert counts[2] == counts[4]  # nothing per depth
    assert not [n for n in counts[4] if not n.startswith("Select")]
    assert len(counts[4]) == (4 if source == "project" else 0)  # project: maw_down[0/1], maw_up[0/1]


def test_forced_passes_on_equal_inputs_project_and_attend_once(monkeypatch):
    """The router oracle's D forced passes (eval, no autograd) share q, k, v and O_orig: on equal inputs and unchanged
    weights they are computed once, and every output equals a pass that computed them afresh; changed inputs,
    changed weights, autograd or an unforced pass compute them again."""
    model, layer = patched("bert", gating_mode="router", depth_dim=4, maw_strength=0.5)
    model.eval()
    inputs = batch()
    calls = []
    original = type(layer.adapter).project
    monkeypatch.setattr(type(layer.adapter), "project", lambda self, *a: calls.append(1) or original(self, *a))

    def run(depth, grad=False, feed=inputs):
        layer.gating.forced_depth = torch.full((feed["input_ids"].shape[0],), depth)
        try:
            with torch.set_grad_enabled(grad):
                return model(**feed).logits.detach().clone()
        finally:
            layer.gating.forced_depth = None

    outs = [run(d) for d in range(4)]
    assert len(calls) == 1
    layer._forced_memo = None
    fresh = [run(d) for d in range(4)]
    for d in range(4):
        layer._forced_memo = None  # each pass from scratch
        assert torch.equal(outs[d], run(d))
    assert not torch.equal(fresh[0], fresh[3])  # the depths differ, so a stale O_maw would show
    calls.clear()
    run(0)
    other = {k: v.flip(0) for k, v in inputs.items()}
    run(0, feed=other)
    assert len(calls) == 1  # run(0) reused the memo; new inputs projected again
    with torch.no_grad():
        layer.base_layer.get_submodule(layer.adapter.q_name).weight.mul_(1.5)  # in place: the version changes
    changed = run(0, feed=other)
    assert len(calls) == 2
    layer._forced_memo = None
    assert torch.equal(changed, run(0, feed=other))
    run(0, grad=True)
    run(0, grad=True)
    assert len(calls) == 5  # with autograd, always afresh
    model(**inputs)  # an unforced pass drops what was kept
    assert layer._forced_memo is None


def test_repeated_inputs_reuse_the_statistics_only_while_inputs_and_weights_hold(monkeypatch):
    """GRPO's samples, one per pass, see the same inputs: with ``repeated_inputs`` set the training path computes
    the depths' statistics once, and recomputes them for other inputs, after a weight update, or with the hint off."""
    from maw_reranker.maw import layer as layer_module

    model, layer = patched("bert", gating_mode="grpo", depth_dim=4)
    model.train()
    calls = []
    original = layer_module.depth_statistics
    monkeypatch.setattr(layer_module, "depth_statistics", lambda *a, **k: calls.append(1) or original(*a, **k))
    inputs = batch()
    layer.gating.repeated_inputs = True
    model(**inputs).logits.sum().backward()
    first = layer._stats_memo[1].clone()
    model(**{k: v.clone() for k, v in inputs.items()}).logits.sum().backward()
    assert len(calls) == 1
    model(**{k: v.flip(0) for k, v in inputs.items()})
    assert len(calls) == 2
    with torch.no_grad():
        layer.base_layer.get_submodule(layer.adapter.k_name).weight.mul_(1.5)
    model(**{k: v.flip(0) for k, v in inputs.items()})
    assert len(calls) == 3
    layer.gating.repeated_inputs = False
    model(**inputs)
    model(**inputs)
    assert len(calls) == 5 and layer._stats_memo is None
    with torch.no_grad():
        layer.base_layer.get_submodule(layer.adapter.k_name).weight.div_(1.5)
    inp, _ = layer.depth_inputs(bound_arguments(model, layer, inputs))
    assert torch.allclose(first, original(inp), atol=1e-6)  # what was reused is what a fresh pass computes


def test_statistics_with_a_score_bias_or_changed_queries_are_never_reused(monkeypatch):
    """DeBERTa's score bias has a dropout of its own, and dropout inside a projection changes q and k: with
    ``repeated_inputs`` set the statistics are still computed in every pass then."""
    from maw_reranker.maw import layer as layer_module

    calls = []
    original = layer_module.depth_statistics
    monkeypatch.setattr(layer_module, "depth_statistics", lambda *a, **k: calls.append(1) or original(*a, **k))
    model, layer = patched("deberta-v2", gating_mode="grpo", depth_dim=2)
    model.train()
    layer.gating.repeated_inputs = True
    model(**batch())
    model(**batch())
    assert len(calls) == 2 and layer._stats_memo is None
    calls.clear()
    model, layer = patched("bert", gating_mode="grpo", depth_dim=2)
    model.train()
    layer.gating.repeated_inputs = True
    q_proj = layer.base_layer.get_submodule(layer.adapter.q_name)
    q_proj.register_forward_hook(lambda m, a, out: torch.nn.functional.dropout(out, 0.5, True))
    model(**batch())
    model(**batch())
    assert len(calls) == 2


def test_forced_memo_sees_inputs_changed_in_place_and_autocast(monkeypatch):
    """The forced-pass memo is not reused under another autocast state, nor when what it kept changed in place."""
    model, layer = patched("bert", gating_mode="router", depth_dim=2)
    model.eval()
    calls = []
    original = type(layer.adapter).project
    monkeypatch.setattr(type(layer.adapter), "project", lambda self, *a: calls.append(1) or original(self, *a))
    inputs = batch()
    layer.gating.forced_depth = torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long)
    with torch.no_grad():
        model(**inputs)
        model(**inputs)
        assert len(calls) == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs)
        assert len(calls) == 2
        model(**inputs)  # autocast off again: not the bf16 pass's parts
        assert len(calls) == 3
        layer._forced_memo[0]["hidden_states"].tensor.add_(1.0)  # the kept input changed in place since
        model(**inputs)
        assert len(calls) == 4
    layer.gating.forced_depth = None


def test_a_batch_of_equal_copies_projects_and_attends_once(monkeypatch):
    """The oracle's batched pass (``gating.replicas`` copies, copy-major, forced depths, eval, no autograd) makes
    q, k, v and O_orig for the first copy and repeats them where the copies are equal; outputs equal a pass without
    the hint. Copies that differ are computed in full."""
    model, layer = patched("bert", gating_mode="router", depth_dim=3, maw_strength=0.5)
    model.eval()
    rows = []
    original = type(layer.adapter).project
    monkeypatch.setattr(type(layer.adapter), "project",
                        lambda self, base, bound: rows.append(bound["hidden_states"].shape[0]) or original(self, base,
                                                                                                         bound))
    one = batch()
    n = one["input_ids"].shape[0]
    equal = {k: v.repeat(3, 1) for k, v in one.items()}
    differ = {k: torch.cat([v, v.flip(0), v]) for k, v in one.items()}
    depths = torch.arange(3).repeat_interleave(n)

    def run(feed, replicas):
        layer.release_memos()
        layer.gating.forced_depth, layer.gating.replicas = depths, replicas
        try:
            with torch.no_grad():
                return model(**feed).logits
        finally:
            layer.gating.forced_depth, layer.gating.replicas = None, 1

    plain = run(equal, 1)
    assert rows == [3 * n]
    rows.clear()
    assert torch.allclose(run(equal, 3), plain, atol=1e-6)
    assert rows == [n]
    rows.clear()
    assert torch.allclose(run(differ, 3), run(differ, 1), atol=1e-6)
    assert rows == [3 * n, 3 * n]
