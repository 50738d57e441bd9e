"""Each loss: its value on hand-made scores, and that it decreases when training on the tiny task."""

from __future__ import annotations

import math

import pytest
import torch

from maw_reranker.train.losses import get_loss, listwise_softmax_ce, margin_loss, pointwise_bce, ranknet_loss
from tests.train.helpers import options, tiny_model_dir, write_task

SCORES = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, -1.0]])


def test_listwise_value():
    expected = [-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1))), -math.log(1 / (1 + math.e + math.exp(-1)))]
    assert torch.allclose(listwise_softmax_ce(SCORES), torch.tensor(expected))
    assert torch.allclose(listwise_softmax_ce(SCORES, temperature=2.0), listwise_softmax_ce(SCORES / 2))


def test_pairwise_values():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ranknet = [-(math.log(sig(2)) + math.log(sig(1))) / 2, -(math.log(sig(-1)) + math.log(sig(1))) / 2]
    assert torch.allclose(ranknet_loss(SCORES), torch.tensor(ranknet))
    assert torch.allclose(margin_loss(SCORES, margin=1.5), torch.tensor([(0 + 0.5) / 2, (2.5 + 0.5) / 2]))


def test_bce_value():
    s = lambda x: math.log(1 + math.exp(-x))  # -log sigmoid(x)  # noqa: E731
    expected = [(s(2) + s(-0.0) + s(-1)) / 3, (s(0) + s(-1) + s(1)) / 3]
    assert torch.allclose(pointwise_bce(SCORES), torch.tensor(expected))


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        get_loss("nope")


@pytest.mark.parametrize("loss", ["listwise", "bce", "ranknet", "margin"])
def test_loss_decreases_on_tiny_task(tmp_path, loss):
    from maw_reranker.train import train

    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    result = train(options(tmp_path, task, model, loss=loss, max_steps=15, lr=3e-3, scheduler="constant"))
    losses = [row["loss/rank"] for row in result.history]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"{loss}: {losses}"
