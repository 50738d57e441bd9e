"""Depth weights per gating mode: learning signals, determinism, reproducibility, GRPO bookkeeping."""

import pytest
import torch

from maw_reranker.maw.config import MAWConfig
from maw_reranker.maw.gating import DepthGating
from maw_reranker.maw.patcher import maw_layers, patch_model
from maw_reranker.utils.tiny_models import tiny_model

from tests.maw.test_patcher import batch


def stats(batch_size=5, depth=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, depth, 4, generator=gen)


@pytest.mark.parametrize("mode", ["uniform", "random", "stat", "argmax", "learned", "gate", "router", "grpo"])
def test_weights_are_distributions(mode):
    gate = DepthGating(MAWConfig(gating_mode=mode, depth_dim=4), hidden_size=8, num_heads=2)
    w = gate(5, stats(), torch.randn(5, 8))
    assert w.shape == (5, 4)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(5))


@pytest.mark.parametrize("mode", ["learned", "gate", "router"])
def test_learned_modes_receive_gradients_through_the_model(mode):
    model = tiny_model("bert", initializer_range=0.3)
    patch_model(model, MAWConfig(gating_mode=mode, depth_dim=4, maw_strength=0.5))
    model.train()
    if mode == "router":  # give the residual a non-zero start so gradients reach both layers
        with torch.no_grad():
            next(iter(maw_layers(model).values())).gating.router[2].weight.normal_(0, 0.1)
    logits = model(**batch()).logits
    logits.sum().backward()
    layer = next(iter(maw_layers(model).values()))
    grads = [p.grad for p in layer.maw_parameters()]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_router_is_deterministic_at_eval_and_stochastic_in_training():
    gate = DepthGating(MAWConfig(gating_mode="router", depth_dim=4), hidden_size=8, num_heads=2)
    s = stats()
    gate.eval()
    first = gate(5, s, None)
    assert torch.equal(first, gate(5, s, None))
    assert torch.equal(first.argmax(-1), gate.last_logits.argmax(-1))
    gate.train()
    torch.manual_seed(0)
    draws = torch.stack([gate(5, s, None).argmax(-1) for _ in range(20)])
    assert (draws != draws[0]).any()  # Gumbel sampling explores


def test_untrained_router_matches_argmax_mode():
    s = stats()
    router = DepthGating(MAWConfig(gating_mode="router", depth_dim=4), 8, 2).eval()
    argmax = DepthGating(MAWConfig(gating_mode="argmax", depth_dim=4), 8, 2)
    assert torch.equal(router(5, s, None), argmax(5, s, None))


def test_router_straight_through_gradient():
    gate = DepthGating(MAWConfig(gating_mode="router", depth_dim=4), 8, 2).train()
    w = gate(5, stats(), None)
    assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
    (w * torch.arange(4.0)).sum().backward()
    assert gate.router[2].weight.grad.abs().sum() > 0


def test_random_is_reproducible_from_its_seed():
    def weights(seed):
        return DepthGating(MAWConfig(gating_mode="random", maw_random_seed=seed), 8, 2, layer_index=3)(2, None, None)

    assert torch.equal(weights(7), weights(7))
    assert not torch.equal(weights(7), weights(8))


def test_grpo_samples_actions_with_log_probs():
    gate = DepthGating(MAWConfig(gating_mode="grpo", depth_dim=4), 8, 2).train()
    s = stats()
    torch.manual_seed(1)
    w = gate(5, s, None)
    actions = gate.last_actions
    assert torch.equal(w.argmax(-1), actions)
    expected = torch.log_softmax(gate.last_logits, -1).gather(-1, actions[:, None]).squeeze(-1)
    assert torch.allclose(gate.last_log_prob, expected)
    gate.last_log_prob.sum().backward()  # the policy is trainable through its log-probabilities
    assert gate.router[2].weight.grad is not None
    gate.eval()
    assert torch.equal(gate(5, s, None).argmax(-1), gate.last_logits.argmax(-1))
    assert gate.last_log_prob is None  # nothing sampled at evaluation


def test_grpo_on_a_real_model_uses_the_depths_it_records():
    """The recorded actions are the depths the layer used (a replay with them forced gives the same scores), and
    their recorded log-probabilities are log pi(a) under the recorded logits, differentiable into the policy."""
    model = tiny_model("bert", initializer_range=0.3)
    patch_model(model, MAWConfig(gating_mode="grpo", depth_dim=4, maw_strength=1.0))
    gate = next(iter(maw_layers(model).values())).gating
    with torch.no_grad():
        gate.router[2].weight.normal_(0, 1.0)  # a policy that is not just the argmax prior
    model.train()
    inputs = batch(size=3)
    draws = []
    for seed in range(6):
        torch.manual_seed(seed)
        sampled = model(**inputs).logits
        actions, log_prob, logits = gate.last_actions, gate.last_log_prob, gate.last_logits
        draws.append(actions)
        expected = torch.log_softmax(logits, -1).gather(-1, actions[:, None]).squeeze(-1)
        assert torch.allclose(log_prob, expected)
        gate.forced_depth = actions.clone()
        replay = model(**inputs).logits
        gate.forced_depth = None
        assert torch.allclose(replay, sampled, atol=1e-6)
    assert any(not torch.equal(d, draws[0]) for d in draws)  # it samples
    log_prob.sum().backward()
    assert gate.router[2].weight.grad.abs().sum() > 0


def test_forced_depth_overrides_every_mode():
    for mode in ["stat", "learned", "router", "grpo"]:
        gate = DepthGating(MAWConfig(gating_mode=mode, depth_dim=4), 8, 2)
        gate.forced_depth = torch.tensor([3, 0, 1, 2, 3])
        assert torch.equal(gate(5, stats(), torch.randn(5, 8)).argmax(-1), gate.forced_depth)


def test_per_head_weights_shape():
    gate = DepthGating(MAWConfig(gating_mode="learned", depth_dim=4, per_head=True), 8, num_heads=2)
    assert gate(3, None, None).shape == (3, 2, 4)
    with pytest.raises(ValueError, match="per_head"):
        MAWConfig(gating_mode="stat", per_head=True)


def test_router_uses_its_gumbel_temperature():
    """``router_tau`` is the temperature of the straight-through Gumbel-softmax: the same one-hot draw under one
    seed, the soft gradient of F.gumbel_softmax at that tau (not at 1)."""
    s = stats()
    grads, draws = {}, {}
    for tau in (0.25, 1.0, 4.0):
        gate = DepthGating(MAWConfig(gating_mode="router", depth_dim=4, router_tau=tau), 8, 2).train()
        logits = gate.policy_logits(s).detach().requires_grad_()
        gate.policy_logits = lambda stats, logits=logits: logits  # a leaf, to read the gradient the draw passes
        torch.manual_seed(0)
        w = gate(5, s, None)
        (w * torch.arange(4.0)).sum().backward()
        reference = logits.detach().requires_grad_()
        torch.manual_seed(0)
        expected = torch.nn.functional.gumbel_softmax(reference, tau=tau, hard=True)
        (expected * torch.arange(4.0)).sum().backward()
        assert torch.equal(w, expected)
        assert torch.allclose(logits.grad, reference.grad)
        grads[tau], draws[tau] = logits.grad, w.detach()
    assert torch.equal(draws[0.25], draws[4.0])  # argmax of (logits + g) / tau: the draw ignores tau
    assert not torch.allclose(grads[0.25], grads[1.0]) and not torch.allclose(grads[4.0], grads[1.0])


def test_random_weights_stay_float32_when_the_model_is_cast():
    """model.to(bf16) casts the model, not the fixed draw: the weights are the float32 ones exactly."""
    config = MAWConfig(gating_mode="random", depth_dim=8, maw_random_seed=3)
    exact = DepthGating(config, 8, 2, layer_index=1)(2, None, None)
    model = tiny_model("bert")
    patch_model(model, MAWConfig(gating_mode="random", depth_dim=8, maw_random_seed=3, inject_last_k=1))
    gate = next(iter(maw_layers(model).values())).gating
    model.to(torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert gate.random_weights.dtype == torch.float32
    assert torch.equal(gate(2, None, None), exact)
    model.half().float()
    assert torch.equal(gate(2, None, None), exact)
