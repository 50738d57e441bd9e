"""Trainable regimes: top-k layers, LoRA on the top layers, and the parameter-matched LoRA rank."""

import pytest

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.train.lora import add_lora, rank_for_budget
from maw_reranker.train.params import layer_of, select_trainable
from tests.train.helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m"))


def _trainable_layers(encoder):
    return sorted({layer_of(n) for n, p in encoder.model.named_parameters() if p.requires_grad} - {None})


def test_top_trains_the_last_layers_maw_and_head_only(model_path):
    encoder = CrossEncoderWithMAW.from_pretrained(model_path, maw=MAWConfig(depth_dim=2, gating_mode="learned"),
                                                  device="cpu")
    total = encoder.model.config.num_hidden_layers
    counts = select_trainable(encoder, "top", top_layers=1)
    assert _trainable_layers(encoder) == [total - 1]
    frozen = [n for n, p in encoder.model.named_parameters() if not p.requires_grad]
    assert any("embeddings" in n for n in frozen) and not any("classifier" in n for n in frozen)
    assert 0 < counts["maw"] < counts["trainable"] < counts["total"]
    full = select_trainable(encoder, "full")
    assert full["trainable"] == full["total"]


def test_top_must_cover_the_maw_layers(model_path):
    encoder = CrossEncoderWithMAW.from_pretrained(model_path, maw=MAWConfig(depth_dim=2, inject_last_k=2), device="cpu")
    with pytest.raises(ValueError, match="top_layers.*cover the MAW layers.*at least 2"):
        select_trainable(encoder, "top", top_layers=1)
    with pytest.raises(ValueError, match="top_layers"):
        select_trainable(encoder, "top", top_layers=99)
    select_trainable(encoder, "top", top_layers=2)


def test_lora_on_top_layers_with_a_matched_rank(model_path):
    maw = CrossEncoderWithMAW.from_pretrained(model_path, maw=MAWConfig(depth_dim=2, depth_source="project",
                                                                        depth_rank=4, gating_mode="learned"),
                                              device="cpu")
    target = select_trainable(maw, "maw_only")["maw"]
    plain = CrossEncoderWithMAW.from_pretrained(model_path, maw=None, device="cpu")
    total = plain.model.config.num_hidden_layers
    top = [total - 1]
    r = rank_for_budget(plain.model, target, layers=top)
    add_lora(plain, r=r, layers=top)
    counts = select_trainable(plain, "lora")
    adapted = {layer_of(n) for n, _ in plain.model.named_parameters() if "lora_" in n}
    assert adapted == set(top)
    per_rank = counts["lora"] // r
    assert abs(counts["lora"] - target) <= per_rank / 2  # the closest rank to MAW's parameter count


@pytest.fixture(scope="module")
def modernbert_path(tmp_path_factory):
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
    from tests.train.helpers import WORDS

    return save_tiny_cross_encoder(tmp_path_factory.mktemp("mb"), WORDS, model_type="modernbert")


def test_top_training_and_top_lora_find_modernbert_layers(modernbert_path):
    """ModernBERT names its layers model.layers.N (not encoder.layer.N) and has a final norm after the last layer
    that only the head reads: top training trains it with the head; LoRA on chosen layers finds them."""
    encoder = CrossEncoderWithMAW.from_pretrained(modernbert_path, maw=MAWConfig(depth_dim=2, gating_mode="learned"),
                                                  device="cpu")
    total = encoder.model.config.num_hidden_layers
    select_trainable(encoder, "top", top_layers=1)
    assert _trainable_layers(encoder) == [total - 1]
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert any(".final_norm." in n for n in trainable)
    assert not any("embeddings" in n for n in trainable)
    plain = CrossEncoderWithMAW.from_pretrained(modernbert_path, maw=None, device="cpu")
    hidden = plain.model.config.hidden_size
    assert rank_for_budget(plain.model, 2 * (hidden + 3 * hidden), layers=[total - 1]) == 2  # Wqkv: hidden -> 3 hidden
    add_lora(plain, r=2, layers=[total - 1])  # default targets: the fused Wqkv
    adapted = {layer_of(n) for n, _ in plain.model.named_parameters() if "lora_" in n}
    assert adapted == {total - 1}
