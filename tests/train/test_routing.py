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
                    loss_fn=listwise_softmax_ce, samples=2, beta=0.0, eta=0.0, eps=1e-6, gates=[gate])
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
                    samples=samples, beta=0.0, eta=0.0, eps=1e-6, gates=[gate])

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
