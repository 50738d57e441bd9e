"""A trained run's saved models carry a card with the run's recipe, data and parameter counts; evaluating the saved
folder adds its measures to that card (the same values as the run folder's metrics.json), and only when the model
was scored as saved."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from maw_reranker.cross_encoder.card import EVAL_RESULTS_NAME, load_card_info
from maw_reranker.experiments.eval_run import EvalOptions, run_eval
from maw_reranker.train.trainer import Trainer
from tests.train.helpers import options, tiny_model_dir, write_task

MAW = {"gating_mode": "learned", "depth_dim": 4, "maw_strength": 0.5}


def _eval(task, model, **kw):
    """`maw-rerank eval` of the task's candidates; the runs go to the working folder's default output folder."""
    return run_eval(EvalOptions(dataset=str(task["dataset"]), split="train", candidates=str(task["run"]),
                                model=str(model), progress=False, standard_measures=False,
                                measures=["nDCG@10", "RR@10"], plots=False, max_length=32, **kw))


def test_trained_model_card_then_eval_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = write_task(tmp_path / "t", n_queries=12)
    base = tiny_model_dir(tmp_path / "m")
    result = Trainer(options(tmp_path, task, base, maw=MAW, trainable="top", max_steps=3, holdout_queries=4)).run()
    final, best = result.output_dir / "final", result.output_dir / "best"
    summary = json.loads((result.output_dir / "train_summary.json").read_text())

    card = ModelCard.load(final / "README.md")
    text = card.text
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-ranking"
    assert card.data.base_model is None  # trained from a local folder with no card: no hub base model invented
    assert "No record of training" not in text and "| `trainable` | top |" in text and "| `loss` | listwise |" in text
    assert "| optimizer steps | 3 |" in text and "| saved model | final |" in text
    assert f"| trained (in the training run) | {summary['parameters']['trainable']:,} |" in text
    assert "| gating | learned |" in text and "| strength (alpha) | 0.5 |" in text
    assert "| `holdout_queries` | 4 |" in text  # training data: the trainer's description
    assert "Not evaluated since it was saved" in text
    info = load_card_info(final)
    assert info.training["max_steps"] == 3 and info.parameters["trainable"] == summary["parameters"]["trainable"]
    assert info.training_run["best_step"] == summary["best_step"]
    assert "| saved model | best |" in (best / "README.md").read_text()

    monkeypatch.setattr("sys.argv", ["/venv/bin/maw-rerank", "eval", "--model", str(final)])
    outcome = _eval(task, final)
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text())
    rows = json.loads((final / EVAL_RESULTS_NAME).read_text())["results"]
    assert {r["measure"]: r["value"] for r in rows} == {m: metrics[m] for m in ("nDCG@10", "RR@10")}
    assert all(r["command"] == f"maw-rerank eval --model {final}" and r["queries"] == 12 for r in rows)
    text = (final / "README.md").read_text()
    assert f"| nDCG@10 | {metrics['nDCG@10']:.4f} | 12 |" in text and "Not evaluated" not in text

    # the unpatched backbone of the same folder is another model: its results stay off this card
    _eval(task, final, maw=None)
    assert len(json.loads((final / EVAL_RESULTS_NAME).read_text())["results"]) == 2
    # a plain checkpoint (not a saved CrossEncoderWithMAW) is never written to
    _eval(task, base, maw=None, variant="base")
    assert not (base / EVAL_RESULTS_NAME).exists() and not (base / "README.md").exists()
