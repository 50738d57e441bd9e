"""`maw-rerank eval` and `maw-rerank suite` from the command line, and the shipped model/suite configs."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from maw_reranker.cli import suite as suite_cli
from maw_reranker.cli.main import main
from maw_reranker.cli.options import ConfigError, load_yaml_config, parse_options
from maw_reranker.evaluate.runner import EvalOptions, parse_maw
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
from tests.data.fixtures import DOCS, QUERIES, write_tsv_layout

REPO = Path(__file__).resolve().parents[2]
WORDS = sorted({w for t, x in DOCS.values() for w in re.findall(r"\w+", f"{t} {x}".lower())}
               | {w for q in QUERIES.values() for w in re.findall(r"\w+", q.lower())})
MAW_FIELDS = {"depth_dim", "depth_source", "gating_mode", "maw_strength", "inject_last_k"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_cross_encoder(tmp_path_factory.mktemp("tiny"), WORDS, initializer_range=0.3))


@pytest.fixture()
def data_args(tmp_path):
    paths = write_tsv_layout(tmp_path / "col")
    paths["run"].write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q in QUERIES for r, d in enumerate(DOCS, 1)))
    return ["--dataset", str(paths["docs"]), "--queries", str(paths["queries"]), "--qrels", str(paths["qrels"]),
            "--run", str(paths["run"]), "--dataset-name", "tiny"]


def test_eval_cli_end_to_end_and_idempotent(data_args, model_dir, tmp_path, capsys):
    args = ["eval", *data_args, "--model", model_dir, "--maw", "{depth_dim: 2, gating_mode: argmax}",
            "--variant", "cli", "--out-dir", str(tmp_path / "exp"), "--progress", "false", "--depth", "3",
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
                 "--out-dir", str(tmp_path / "exp"), "--standard-measures", "false"]) == 0
    config = json.loads((tmp_path / "exp" / "tiny" / "composed" / "seed_0" / "config.json").read_text())
    assert config["config"]["maw"]["gating_mode"] == "uniform" and config["config"]["maw"]["depth_dim"] == 2


def test_eval_cli_errors_name_the_problem(data_args, model_dir, tmp_path, capsys):
    assert main(["eval", *data_args, "--model", model_dir, "--maw", "{depthdim: 2}"]) == 1
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


def test_suite_plan_errors(tmp_path):
    opts = suite_cli.Options(datasets=["x"], variants=[{"name": "a", "maw": None, "modle": "m"}], baseline="a")
    with pytest.raises(ConfigError, match="modle"):
        suite_cli.plan(opts)
    with pytest.raises(ConfigError, match="baseline 'zzz'"):
        suite_cli.plan(suite_cli.Options(datasets=["x"], variants=["non_maw"], baseline="zzz"))
    with pytest.raises(ConfigError, match="duplicate"):
        suite_cli.variant_entries(["non_maw", "non_maw"])
    with pytest.raises(ConfigError, match="not found"):
        suite_cli.variant_entries(["no_such_variant"])


def test_shipped_model_configs_are_valid():
    files = sorted((REPO / "configs" / "models").glob("*.yaml"))
    names = {f.stem for f in files}
    expected = {"non_maw", "maw_default", "maw_inject_last2", "maw_lora_finetune"} | {f"maw_depth{d}" for d in (1, 2, 4, 8, 16)} \
        | {f"maw_gating_{g}" for g in ("uniform", "random", "argmax", "stat", "learned", "gate", "router", "grpo")}
    assert expected <= names
    allowed = {f.name for f in dataclasses.fields(EvalOptions)}
    for f in files:
        data = load_yaml_config(f)
        assert set(data) <= allowed, f
        opts = parse_options(EvalOptions, data)
        maw = parse_maw(opts.maw)
        if f.stem == "non_maw":
            assert maw is None
        elif f.stem.startswith("maw_") and f.stem != "maw_lora_finetune":
            assert maw is not None and MAW_FIELDS <= set(load_yaml_config(f)["maw"])
    default = parse_maw(load_yaml_config(REPO / "configs/models/maw_default.yaml")["maw"])
    assert (default.depth_dim, default.gating_mode, default.inject_last_k, default.maw_strength) == (8, "stat", 1, 0.15)
    assert parse_maw(load_yaml_config(REPO / "configs/models/maw_depth16.yaml")["maw"]).depth_dim == 16
    assert parse_maw(load_yaml_config(REPO / "configs/models/maw_inject_last2.yaml")["maw"]).inject_last_k == 2


def test_shipped_suites_expand(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("main", "ablations", "dev_sweep", "learned"):
        opts = parse_options(suite_cli.Options, load_yaml_config(REPO / "configs" / "suites" / f"{name}.yaml"))
        variants = [n for n, _ in suite_cli.variant_entries(opts.variants)]
        assert opts.baseline in variants
        suite_cli.dataset_entries(opts.datasets)
        if name == "dev_sweep":
            assert len(variants) == 1 + 5 * 4
    main_suite = parse_options(suite_cli.Options, load_yaml_config(REPO / "configs/suites/main.yaml"))
    assert [n for n, _ in suite_cli.variant_entries(main_suite.variants)] == ["non_maw", "maw_default"]
