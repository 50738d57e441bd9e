"""The model card of save_pretrained: Hugging Face metadata, what it knows and what it says it does not know;
eval results added under a lock; the card rewritten from the facts the folder keeps."""

from __future__ import annotations

import json
import threading

import pytest

from maw_reranker.cross_encoder.card import (CARD_INFO_NAME, CARD_NAME, EVAL_RESULTS_NAME, CardInfo, base_card_metadata,
                                             is_hub_id, load_card_info, record_eval_results)
from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
from maw_reranker.maw.config import MAWConfig
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

WORDS = "what is maw attention depth the weather nice".split()


@pytest.fixture()
def tiny(tmp_path):
    return save_tiny_cross_encoder(tmp_path / "tiny", WORDS)


def _card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / CARD_NAME)


def test_plain_save_has_a_card_that_knows_nothing_of_training(tmp_path, tiny):
    model = CrossEncoderWithMAW.from_pretrained(tiny, maw=MAWConfig(depth_dim=4, gating_mode="uniform",
                                                                    maw_strength=0.3), device="cpu")
    out = model.save_pretrained(tmp_path / "saved")
    card = _card(out)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-ranking"
    assert {"maw", "cross-encoder", "reranker"} <= set(data["tags"])
    assert "base_model" not in data and "license" not in data and "datasets" not in data  # nothing invented
    text = card.text
    assert "No record of training" in text and "Not evaluated since it was saved" in text
    assert "| gating | uniform |" in text and "| depth (`depth_dim`) | 4 |" in text and "| strength (alpha) | 0.3 |" in text
    total = sum(p.numel() for p in model.model.parameters())
    assert f"| total (saved model) | {total:,} |" in text
    assert (out / CARD_INFO_NAME).is_file() and not (out / EVAL_RESULTS_NAME).exists()
    # the folder still loads and the card is the only thing added to the Hugging Face layout
    again = CrossEncoderWithMAW.from_pretrained(out, device="cpu")
    assert again.maw_config == model.maw_config


def test_unpatched_model_card_says_no_maw(tmp_path, tiny):
    out = CrossEncoderWithMAW.from_pretrained(tiny, maw=None, device="cpu").save_pretrained(tmp_path / "plain")
    assert "this model has no MAW layers" in _card(out).text


def test_card_info_metadata_and_training_section(tmp_path, tiny):
    info = CardInfo(base_model="cross-encoder/ms-marco-MiniLM-L-12-v2", license="apache-2.0", language="en",
                    datasets=["org/data"], training={"model": "cross-encoder/ms-marco-MiniLM-L-12-v2", "loss": "listwise",
                                                     "lr": 2e-5, "trainable": "full", "top_layers": 1},
                    training_run={"steps": 7, "saved": "final", "command": "maw-rerank train --config x"},
                    training_data={"dataset": "scifact", "split": "train"}, parameters={"trainable": 123})
    out = CrossEncoderWithMAW.from_pretrained(tiny, maw=None, device="cpu").save_pretrained(tmp_path / "m", card=info)
    card = _card(out)
    data = card.data.to_dict()
    assert data["base_model"] == "cross-encoder/ms-marco-MiniLM-L-12-v2" and data["license"] == "apache-2.0"
    assert data["language"] == ["en"] and data["datasets"] == ["org/data"]
    assert "| `lr` | 2e-05 |" in card.text and "| `loss` | listwise |" in card.text
    assert "`top_layers`" not in card.text.split("<details>")[0]  # trainable: full -> not a recipe row
    assert "`maw-rerank train --config x`" in card.text and "| optimizer steps | 7 |" in card.text
    assert "| trained (in the training run) | 123 |" in card.text
    saved = load_card_info(out)
    assert saved.training["loss"] == "listwise" and saved.parameters["trainable"] == 123
    assert base_card_metadata(out)["base_model"] == "cross-encoder/ms-marco-MiniLM-L-12-v2"


def test_eval_results_are_added_replaced_and_locked(tmp_path, tiny):
    out = CrossEncoderWithMAW.from_pretrained(tiny, maw=None, device="cpu").save_pretrained(tmp_path / "m")
    row = {"dataset": "tiny", "split": "test", "measure": "nDCG@10", "value": 0.5, "run_dir": "/r/1",
           "command": "maw-rerank eval --model m"}
    record_eval_results(out, [row])
    record_eval_results(out, [{**row, "value": 0.75}])  # the same run folder and measure: replaced
    threads = [threading.Thread(target=record_eval_results, args=(out, [{**row, "run_dir": f"/r/t{i}"}]))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = json.loads((out / EVAL_RESULTS_NAME).read_text())["results"]
    assert len(rows) == 7 and [r["value"] for r in rows if r["run_dir"] == "/r/1"] == [0.75]
    text = _card(out).text
    assert "| tiny (test) | nDCG@10 | 0.7500 |" in text and "`maw-rerank eval --model m`" in text
    assert "Not evaluated" not in text


def test_is_hub_id(tmp_path):
    assert is_hub_id("cross-encoder/ms-marco-MiniLM-L-12-v2")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("bench:x") and not is_hub_id("a/b/c") and not is_hub_id(None)
