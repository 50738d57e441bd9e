"""The configs shipped inside the package: valid, complete, and found by name from any working directory."""

import dataclasses

from maw_reranker.config.files import CONFIGS_DIR, load_yaml_config
from maw_reranker.config.maw_spec import parse_maw
from maw_reranker.config.parser import parse_options
from maw_reranker.experiments import suite
from maw_reranker.experiments.eval_run import EvalOptions
from maw_reranker.experiments.suite import SuiteOptions

MAW_FIELDS = {"depth_dim", "depth_source", "gating_mode", "maw_strength", "inject_last_k"}


def test_shipped_model_configs_are_valid():
    files = sorted((CONFIGS_DIR / "models").glob("*.yaml"))
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
    default = parse_maw(load_yaml_config(CONFIGS_DIR / "models/maw_default.yaml")["maw"])
    assert (default.depth_dim, default.gating_mode, default.inject_last_k, default.maw_strength) == (8, "stat", 1, 0.15)
    assert parse_maw(load_yaml_config(CONFIGS_DIR / "models/maw_depth16.yaml")["maw"]).depth_dim == 16
    assert parse_maw(load_yaml_config(CONFIGS_DIR / "models/maw_inject_last2.yaml")["maw"]).inject_last_k == 2


def test_shipped_suites_expand(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # packaged configs are found from any working directory
    for name in ("main", "ablations", "dev_sweep", "learned"):
        opts = parse_options(SuiteOptions, load_yaml_config(CONFIGS_DIR / "suites" / f"{name}.yaml"))
        variants = [n for n, _ in suite.variant_entries(opts.variants)]
        assert opts.baseline in variants
        suite.dataset_entries(opts.datasets)
        if name == "dev_sweep":
            assert len(variants) == 1 + 5 * 4
    main_suite = parse_options(SuiteOptions, load_yaml_config(CONFIGS_DIR / "suites/main.yaml"))
    assert [n for n, _ in suite.variant_entries(main_suite.variants)] == ["non_maw", "maw_default"]
