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


def _disk_full_config(tmp_path) -> Path:
    task = write_task(tmp_path / "t")
    model = tiny_model_dir(tmp_path / "m")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {model}\ndataset: {task['dataset']}\nsplit: train\ncandidates: {task['run']}\n"
                      "maw: {gating_mode: learned, depth_dim: 4}\nnum_negatives: 3\nbatch_size: 4\nmax_length: 32\n"
                      f"report_to: []\nprogress: false\noutput_dir: {tmp_path / 'out'}\nmax_steps: 2\n")
    return config


def _safetensors_disk_full(tensors, filename, *args, **kwargs):
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"partial")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _torch_disk_full(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                       "data/3: file write failed")


@pytest.mark.parametrize("target, fake, where", [
    ("transformers.modeling_utils.safe_save_file", _safetensors_disk_full, None),
    ("accelerate.Accelerator.save_state", _torch_disk_full, "checkpoints/.tmp-step_0000002"),
], ids=["final model (safetensors)", "checkpoint (torch)"])
def test_a_full_disk_names_the_output_folder(tmp_path, capsys, monkeypatch, target, fake, where):
    config = _disk_full_config(tmp_path)
    monkeypatch.setattr(target, fake)
    capsys.readouterr()  # the tiny model's save
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected" not in err, err
    out = tmp_path / "out"
    assert err.startswith(f"maw-rerank train: error: no space left on device while writing {out}"), err
    if where:
        assert f"(at {out / where})" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder left behind


def test_a_full_quota_while_logging_names_the_output_folder(tmp_path, capsys, monkeypatch):
    import builtins
    import errno

    from maw_reranker.train import trainer

    def quota_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")  # as a write() says it: no file name
        return builtins.open(file, mode, *args, **kwargs)

    config = _disk_full_config(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(trainer, "open", quota_open, raising=False)
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"maw-rerank train: error: disk quota exceeded while writing {tmp_path / 'out'}; free space there "
                   "or choose another output")
