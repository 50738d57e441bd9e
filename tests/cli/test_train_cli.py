"""`maw-rerank train` from YAML configs and flags; every shipped recipe parses and validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maw_reranker.cli.main import main
from maw_reranker.cli.train import Options
from maw_reranker.config.files import CONFIGS_DIR
from maw_reranker.config.parser import parse_options
from tests.train.helpers import tiny_model_dir, write_task

RECIPES = sorted((CONFIGS_DIR / "training").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_parse_and_validate(recipe):
    options = parse_options(Options, {"config": [str(recipe)]})
    options.validate()
    assert options.model and options.dataset


def test_recipe_composition():
    options = parse_options(Options, {"config": [str(RECIPES[0].parent / "router.yaml")], "lr": "3e-5"})
    assert options.maw["gating_mode"] == "router" and options.router_oracle_weight == 0.5
    assert options.lr == 3e-5 and options.dataset == "scifact"  # inherited: official SciFact through ir_datasets


def test_cli_train_runs(tmp_path, capsys):
    task = write_task(tmp_path / "t")
    model = tiny_model_dir(tmp_path / "m")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {model}\ndataset: {task['dataset']}\nsplit: train\ncandidates: {task['run']}\n"
                      "maw: {gating_mode: learned, depth_dim: 4}\nnum_negatives: 3\nbatch_size: 4\nmax_length: 32\n"
                      f"report_to: []\nprogress: false\noutput_dir: {tmp_path / 'out'}\n")
    code = main(["train", "--config", str(config), "--max-steps", "2", "--maw", '{"gating_mode": "gate", "depth_dim": 2}',
                 "--loss", "ranknet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["final_model"]).is_dir()
    saved = json.loads((tmp_path / "out" / "final" / "maw_config.json").read_text())
    assert saved["gating_mode"] == "gate" and saved["depth_dim"] == 2


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--model", "m", "--dataset", "d", "--loss", "hinge"]) == 2
    assert "option 'loss' got 'hinge'" in capsys.readouterr().err
    task = write_task(tmp_path / "t", no_positive=True)
    code = main(["train", "--model", "m", "--dataset", str(task["dataset"]), "--split", "train",
                 "--candidates", str(task["run"]), "--report-to", "", "--output-dir", str(tmp_path / "o")])
    assert code == 1
    assert "no query has a positive" in capsys.readouterr().err
