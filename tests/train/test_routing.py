"""GRPO advantages and objective against hand-computed values; the oracle depth search."""

from __future__ import annotations

import math

import torch

from maw_reranker.train.routing import (group_advantages, grpo_loss, oracle_depths, policy_regularizers,
                                        routing_gates)


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [-1.0, -1.0, -1.0, -1.0]])
    # group 1: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    std = math.sqrt(3.5)
    expected = torch.tensor([[-2 / (std + 1e-6), -1 / (std + 1e-6), 0.0, 3 / (std + 1e-6)], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(group_advantages(rewards, eps=1e-6), expected, atol=1e-7)


def test_policy_regularizers_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-12], [0.25, 0.25, 0.25, 0.25]]))
    kl, entropy = policy_regularizers(logits)
    h1 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert math.isclose(entropy.item(), (h1 + math.log(4)) / 2, rel_tol=1e-5)
    assert math.isclose(kl.item(), ((math.log(4) - h1) + 0.0) / 2, rel_tol=1e-5)  # KL(pi || U) = log D - H(pi)


def test_grpo_loss_hand_computed():
    adv = torch.tensor([[1.0, -1.0]])
    log_probs = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    logits = [torch.zeros(3, 4)]  # uniform: KL 0, entropy log 4
    out = grpo_loss(adv, log_probs, logits, beta=0.1, eta=0.2)
    assert math.isclose(out["policy"].item(), -(1.0 * -0.5 + -1.0 * -2.0) / 2)
    assert math.isclose(out["loss"].item(), out["policy"].item() - 0.2 * math.log(4), rel_tol=1e-6)
    out["loss"].backward()
    assert torch.allclose(log_probs.grad, torch.tensor([[-0.5, 0.5]]))  # d/dlogp of -mean(adv * logp)


def test_oracle_depth_is_the_best_forced_depth(tmp_path):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.maw.config import MAWConfig
    from maw_reranker.train.losses import listwise_softmax_ce
    from tests.train.helpers import tiny_model_dir

    path = tiny_model_dir(tmp_path / "m")
    enc = CrossEncoderWithMAW.from_pretrained(path, maw=MAWConfig(gating_mode="router", depth_dim=4, maw_strength=1.0),
                                              device="cpu")
    pairs = [("apple story", "apple the apples"), ("apple story", "river of"), ("river story", "river and rivers"),
             ("river story", "tiger a")]
    features = dict(enc.tokenize(pairs))
    oracle = oracle_depths(enc, features, groups=2, group_size=2, depth=4, loss_fn=listwise_softmax_ce)
    gates = routing_gates(enc.model)
    manual = []
    with torch.no_grad():
        for d in range(4):
            for g in gates:
                g.forced_depth = torch.full((4,), d)
            manual.append(listwise_softmax_ce(enc(**features).view(2, 2)))
        for g in gates:
            g.forced_depth = None
    assert torch.equal(oracle, torch.stack(manual, 1).argmin(1))
    assert all(g.forced_depth is None for g in gates)


def test_grpo_step_wires_rewards_log_probs_and_advantages():
    from types import SimpleNamespace

    from maw_reranker.train.losses import listwise_softmax_ce
    from maw_reranker.train.routing import grpo_step

    gate = SimpleNamespace(last_log_prob=None, last_logits=None)

    def model(input_ids):  # G=2 samples x 1 group x (1 positive + 1 negative), sample-major
        assert input_ids.shape[0] == 4
        gate.last_log_prob = torch.tensor([-0.1, -0.2, -0.5, -0.7])
        gate.last_logits = torch.zeros(4, 3)
        return torch.tensor([2.0, 0.0, 0.0, 1.0])

    out = grpo_step(model, {"input_ids": torch.zeros(2, 5, dtype=torch.long)}, groups=1, group_size=2,
                    loss_fn=listwise_softmax_ce, samples=2, beta=0.0, eta=0.0, eps=1e-6, gates=[gate],
                    max_rows=512)  # one forward of both samples (a CPU's default is one per forward)
    losses = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))]
    assert math.isclose(out["rank"].item(), sum(losses) / 2, rel_tol=1e-6)
    assert math.isclose(out["reward"].item(), -sum(losses) / 2, rel_tol=1e-6)
    std = abs(losses[0] - losses[1]) / 2
    adv = std / (std + 1e-6)  # +adv for the better sample, -adv for the worse
    assert math.isclose(out["policy"].item(), -(adv * -0.3 + -adv * -1.2) / 2, rel_tol=1e-5)


def test_grpo_step_reads_the_repeated_batch_sample_major():
    """Several groups and samples: the forward of the repeated batch is [samples][groups][pairs] (repeat_features),
    so group g's choice under sample s is rows s * groups * group_size + g * group_size + (0..group_size)."""
    from types import SimpleNamespace

    from maw_reranker.train.losses import listwise_softmax_ce
    from maw_reranker.train.routing import grpo_step, repeat_features

    samples, groups, size = 3, 2, 2
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(samples * groups * size, generator=gen) * 2
    log_prob = -torch.rand(samples * groups * size, generator=gen)
    gate = SimpleNamespace(last_log_prob=None, last_logits=None)
    ids = torch.arange(groups * size)[:, None].expand(-1, 5)  # row r holds r: the repeat's order is visible

    def model(input_ids):
        assert torch.equal(input_ids[:, 0], torch.arange(groups * size).repeat(samples))  # sample-major
        gate.last_log_prob, gate.last_logits = log_prob, torch.zeros(len(input_ids), 3)
        return scores

    assert torch.equal(repeat_features({"input_ids": ids}, samples)["input_ids"][:, 0],
                       torch.arange(groups * size).repeat(samples))
    out = grpo_step(model, {"input_ids": ids}, groups=groups, group_size=size, loss_fn=listwise_softmax_ce,
                    samples=samples, beta=0.0, eta=0.0, eps=1e-6, gates=[gate], max_rows=512)

    def rows(s, g):
        first = s * groups * size + g * size
        return slice(first, first + size)

    loss = torch.tensor([[float(listwise_softmax_ce(scores[rows(s, g)].view(1, size))) for s in range(samples)]
                         for g in range(groups)])  # [groups, samples]
    logp = torch.tensor([[float(log_prob[rows(s, g)].sum()) for s in range(samples)] for g in range(groups)])
    adv = group_advantages(-loss, eps=1e-6)
    assert math.isclose(out["rank"].item(), loss.mean().item(), rel_tol=1e-6)
    assert math.isclose(out["reward_std"].item(), loss.std(dim=1, unbiased=False).mean().item(), rel_tol=1e-5)
    assert math.isclose(out["policy"].item(), -(adv * logp).mean().item(), rel_tol=1e-5)


# -- the batched passes (issue 21: the D forced depths / G samples as one forward) equal the sequential ones -------
PAIRS = [("apple story", "apple the apples"), ("apple story", "river of"), ("apple story", "tiger a story"),
         ("river story", "river and rivers"), ("river story", "tiger a"), ("river story", "apple of the"),
         ("engine story", "engine and engines"), ("engine story", "copper with")]


def _encoder(tmp_path, mode: str, k: int = 2, dropout: float = 0.0, router_std: float = 0.5, **maw):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.maw.config import MAWConfig
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
    from tests.train.helpers import WORDS

    torch.manual_seed(0)
    path = save_tiny_cross_encoder(tmp_path / "m", WORDS, seed=0, initializer_range=0.5, num_layers=3)  # scores that vary
    enc = CrossEncoderWithMAW.from_pretrained(path, device="cpu",
                                              maw=MAWConfig(gating_mode=mode, depth_dim=4, maw_strength=1.0,
                                                            inject_last_k=k, **maw))
    for gate in routing_gates(enc.model):  # a non-zero router residual, so that depths and policies differ
        for p in gate.router.parameters():
            torch.nn.init.normal_(p, std=router_std)
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    return enc


def _views(enc):
    """(model, features, train) for the full model and for the cached top (TopModel on the prefix states of layer 1:
    the top holds both MAW layers, as top-layer training requires)."""
    from maw_reranker.cross_encoder.prefix import prefix_states, split_layer, train_top
    from maw_reranker.cross_encoder.top import TopModel

    features = dict(enc.tokenize(PAIRS))
    start = split_layer(enc, 2)
    states = prefix_states(enc, features, start)
    top = TopModel(enc, start)
    cached = {"input_ids": torch.zeros_like(states["attention_mask"], dtype=torch.long),
              "attention_mask": states["attention_mask"], "hidden_states": states["hidden_states"]}
    return {"full": (enc, features, lambda: enc.train()), "cached": (top, cached, lambda: train_top(enc, start))}


def _sequential_forced_losses(model, features, groups, size, depth, loss_fn):
    """The reference: one eval-mode forward per forced depth."""
    gates = routing_gates(model, ("router",))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    out = []
    with torch.no_grad():
        for d in range(depth):
            for g in gates:
                g.forced_depth = torch.full((groups * size,), d)
            out.append(loss_fn(model(**features).float().view(groups, size)))
    for g in gates:
        g.forced_depth = None
    for m, training in modes:
        m.training = training
    return torch.stack(out, 1)


import pytest  # noqa: E402


@pytest.mark.parametrize("view", ["full", "cached"])
# the CPU default (one depth per pass); one pass of all 4 depths; one depth per pass; 2 depths per pass (chunks)
@pytest.mark.parametrize("max_rows", [None, 512, 8, 20])
def test_batched_oracle_equals_sequential_forced_depths(tmp_path, view, max_rows):
    from maw_reranker.train.losses import listwise_softmax_ce
    from maw_reranker.train.routing import forced_depth_losses

    enc = _encoder(tmp_path, "router", dropout=0.3)  # eval mode in the oracle: dropout does not enter it
    model, features, train = _views(enc)[view]
    train()
    before = [(m, m.training) for m in model.modules()]
    groups, size = 3, 2  # the first 6 pairs
    features = {k: v[:groups * size] for k, v in features.items()}
    reference = _sequential_forced_losses(model, features, groups, size, 4, listwise_softmax_ce)  # with statistics
    import maw_reranker.maw.layer as layer_module

    real, calls = layer_module.depth_statistics, []
    layer_module.depth_statistics = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        losses = forced_depth_losses(model, features, groups, size, 4, listwise_softmax_ce, max_rows=max_rows)
    finally:
        layer_module.depth_statistics = real
    assert not calls  # the oracle's forced passes skip the statistics (their router logits would go unused)
    assert all(g.forced_logits for g in routing_gates(model))  # restored
    assert losses.shape == (groups, 4)
    assert torch.allclose(losses, reference, atol=1e-5, rtol=1e-5)
    assert (reference.max(1).values - reference.min(1).values).min() > 1e-3  # depths do differ: a real check
    oracle = oracle_depths(model, features, groups, size, 4, listwise_softmax_ce, max_rows=max_rows)
    assert torch.equal(oracle, reference.argmin(1))
    assert all(g.forced_depth is None for g in routing_gates(model))
    assert [m.training for m, _ in before] == [t for _, t in before]  # every module's mode restored


def _recording(gates):
    """Wrap each gate's ``record`` to keep every forward's sampled actions (a gate keeps only its last)."""
    actions = {id(g): [] for g in gates}
    for g in gates:
        original = g.record

        def record(decision, _g=g, _original=original):
            if decision.actions is not None and _g.forced_depth is None:
                actions[id(_g)].append(decision.actions.detach().clone())
            _original(decision)

        g.record = record
    return actions


def _sequential_grpo(model, features, gates, actions, samples, groups, size, loss_fn, beta, eta, eps):
    """The reference: one forward per sample, each replaying that sample's actions as forced depths; log pi from
    the recorded logits. Returns the total loss (rank + policy objective) and the per-sample rewards."""
    from maw_reranker.train.routing import grpo_loss

    pairs = groups * size
    scores, logp, logits = [], 0, [[] for _ in gates]
    per_sample_logp = []
    for s in range(samples):
        for g in gates:
            g.forced_depth = actions[id(g)][s * pairs:(s + 1) * pairs]
        scores.append(model(**features).float().view(groups, size))
        lp = 0
        for i, g in enumerate(gates):
            log_pi = torch.log_softmax(g.last_logits.float(), -1)
            lp = lp + log_pi.gather(1, g.forced_depth[:, None]).squeeze(1).view(groups, size).sum(-1)
            logits[i].append(g.last_logits)
        per_sample_logp.append(lp)
    for g in gates:
        g.forced_depth = None
    per_sample = torch.stack([loss_fn(sc) for sc in scores], 1)  # [groups, G]
    rewards = -per_sample.detach()
    adv = group_advantages(rewards, eps)
    logp = torch.stack(per_sample_logp, 1)
    out = grpo_loss(adv, logp, [torch.cat(parts) for parts in logits], beta, eta)
    return per_sample.mean() + out["loss"], rewards, adv, out


@pytest.mark.parametrize("view", ["full", "cached"])
# 512: one pass of G=3 samples; None: a CPU's default, one sample per pass, as 8 gives; 16: 2 + 1
@pytest.mark.parametrize("max_rows", [512, None, 8, 16])
def test_batched_grpo_equals_sequential_samples(tmp_path, view, max_rows):
    from maw_reranker.train.losses import listwise_softmax_ce
    from maw_reranker.train.routing import grpo_step

    # Two grpo layers; dropout 0, so replaying the actions is exact; a flat prior, so that the samples differ.
    enc = _encoder(tmp_path, "grpo", router_std=0.1, stat_sharpness=0.0)
    model, features, train = _views(enc)[view]
    train()
    gates = routing_gates(model, ("grpo",))
    assert len(gates) == 2
    samples, groups, size, beta, eta, eps = 3, 2, 4, 0.05, 0.02, 1e-6
    actions = _recording(gates)
    torch.manual_seed(3)
    out = grpo_step(model, features, groups, size, listwise_softmax_ce, samples, beta, eta, eps, max_rows=max_rows)
    expected_passes = {512: 1, None: 3, 8: 3, 16: 2}[max_rows]
    assert all(len(a) == expected_passes for a in actions.values())
    actions = {k: torch.cat(v) for k, v in actions.items()}
    assert all(len(a) == samples * groups * size for a in actions.values())
    params = [p for p in model.parameters() if p.requires_grad]
    total = out["rank"] + out["loss"]
    grads = torch.autograd.grad(total, params, allow_unused=True)

    ref_total, rewards, adv, ref = _sequential_grpo(model, features, gates, actions, samples, groups, size,
                                                    listwise_softmax_ce, beta, eta, eps)
    ref_grads = torch.autograd.grad(ref_total, params, allow_unused=True)
    assert float(rewards.std(1).max()) > 1e-4  # the samples' rewards differ: advantages are not all zero
    for name in ("policy", "kl", "entropy", "loss"):
        assert torch.allclose(out[name], ref[name], atol=1e-5, rtol=1e-4), name
    assert torch.allclose(out["reward"], rewards.mean(), atol=1e-6, rtol=1e-5)
    assert torch.allclose(out["reward_std"], rewards.std(1, unbiased=False).mean(), atol=1e-6, rtol=1e-5)
    assert torch.allclose(total, ref_total, atol=1e-5, rtol=1e-5)
    n_grads = 0
    for p, g, r in zip(params, grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            n_grads += 1
            assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
    assert n_grads > 0
    gate_grads = [g for p, g in zip(params, grads) if any(p is q for gt in gates for q in gt.router.parameters())]
    assert any(g is not None and g.abs().sum() > 0 for g in gate_grads)  # the policy gradient reaches the router


@pytest.mark.parametrize("view", ["full", "cached"])
def test_grpo_samples_share_statistics_and_leave_nothing_behind(tmp_path, view, monkeypatch):
    """On a CPU GRPO runs one sample per forward; the first MAW layer sees equal queries and keys in every sample
    and computes its statistics once, and after the step no layer keeps anything of those passes (so
    the model deep-copies, as saving a LoRA model does)."""
    import copy

    from maw_reranker.maw import layer as layer_module
    from maw_reranker.maw.patcher import maw_layers
    from maw_reranker.train.losses import listwise_softmax_ce
    from maw_reranker.train.routing import grpo_step

    enc = _encoder(tmp_path, "grpo", router_std=0.1, stat_sharpness=0.0)
    model, features, train = _views(enc)[view]
    train()
    calls = []
    original = layer_module.depth_statistics
    monkeypatch.setattr(layer_module, "depth_statistics", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = grpo_step(model, features, 2, 4, listwise_softmax_ce, 3, 0.05, 0.02, 1e-6)
    (out["rank"] + out["loss"]).backward()
    layers = list(maw_layers(enc.model).values())
    # two grpo layers, three samples: the first sees equal queries and keys in every sample (nothing random before
    # it: dropout 0) and computes once; the second's input differs by sample (the first layer's sampled depths)
    assert len(calls) == 1 + 3
    assert all(m._stats_memo is None and m._forced_memo is None for m in layers)
    enc.eval()
    with torch.no_grad():  # as dev evaluation before a save: the gates' records of the step are replaced
        enc.model(**dict(enc.tokenize(PAIRS)))
    copy.deepcopy(enc)
