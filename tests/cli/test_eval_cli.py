"""`maw-rerank eval` and `maw-rerank suite` from the command line, and the shipped model/suite configs."""

import json

import pytest
import yaml

from maw_reranker.cli.main import main
from tests.data.fixtures import DOCS, QUERIES, write_tsv_layout



@pytest.fixture()
def data_args(tmp_path):
    paths = write_tsv_layout(tmp_path / "col")
    paths["run"].write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q in QUERIES for r, d in enumerate(DOCS, 1)))
    return ["--dataset", str(paths["docs"]), "--queries", str(paths["queries"]), "--qrels", str(paths["qrels"]),
            "--run", str(paths["run"]), "--dataset-name", "tiny"]


def test_eval_cli_end_to_end_and_idempotent(data_args, model_dir, tmp_path, capsys):
    args = ["eval", *data_args, "--model", model_dir, "--maw", "{depth_dim: 2, gating_mode: argmax}",
            "--variant", "cli", "--output-dir", str(tmp_path / "exp"), "--progress", "false", "--depth", "3",
            "--extra-measures", "P@1", "--standard-measures", "false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "nDCG@10=" in out
    run_dir = tmp_path / "exp" / "tiny" / "cli" / "seed_0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "R@100", "P@1"}
    assert (run_dir / "depth_log.jsonl").is_file()
    assert main(args) == 0
    assert "complete already" in capsys.readouterr().out


def test_eval_cli_composed_yaml_configs(data_args, model_dir, tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": model_dir, "batch_size": 4, "progress": False,
                                                        "maw": {"depth_dim": 2, "gating_mode": "stat"}}))
    (tmp_path / "variant.yaml").write_text("defaults: [base.yaml]\nmaw: {gating_mode: uniform}\nvariant: composed\n")
    assert main(["eval", "--config", str(tmp_path / "variant.yaml"), *data_args,
                 "--output-dir", str(tmp_path / "exp"), "--standard-measures", "false"]) == 0
    config = json.loads((tmp_path / "exp" / "tiny" / "composed" / "seed_0" / "config.json").read_text())
    assert config["config"]["maw"]["gating_mode"] == "uniform" and config["config"]["maw"]["depth_dim"] == 2


def test_eval_cli_errors_name_the_problem(data_args, model_dir, tmp_path, capsys):
    assert main(["eval", *data_args, "--model", model_dir, "--maw", "{depthdim: 2}"]) == 2  # a bad option value
    assert "depthdim" in capsys.readouterr().err
    assert main(["eval", *data_args, "--model", model_dir, "--precision", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err
    assert main(["eval", *data_args, "--model", str(tmp_path / "no-such-model")]) == 1
    assert "model directory not found" in capsys.readouterr().err


def test_suite_cli_tiny_suite(data_args, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = dict(zip([a.lstrip("-").replace("-", "_") for a in data_args[::2]], data_args[1::2]))
    suite = {"name": "tiny", "datasets": [dataset], "seeds": [0], "baseline": "plain",
             "variants": [{"name": "plain", "model": model_dir, "maw": None},
                          {"name": "g", "model": model_dir, "grid": {"maw.depth_dim": [1, 2]},
                           "maw": {"gating_mode": "uniform", "maw_strength": 0.5}}],
             "overrides": {"progress": False, "standard_measures": False}, "n_resamples": 100}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["suite", "--config", "suite.yaml", "--dry-run", "true"]) == 0
    assert "3 runs planned" in capsys.readouterr().out
    assert main(["suite", "--config", "suite.yaml"]) == 0
    out = capsys.readouterr().out
    assert "3 runs done" in out and "summary tiny:" in out
    summary = json.loads((tmp_path / "experiments/tiny/_suites/tiny/summary.json").read_text())
    assert set(summary["comparisons"]) == {"g-depth_dim1", "g-depth_dim2"}
    assert main(["suite", "--config", "suite.yaml"]) == 0
    assert "0 runs done, 3 complete already" in capsys.readouterr().out
