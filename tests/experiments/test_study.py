"""A training study end to end on a tiny task: trainings reused when complete, suites, matched LoRA, report."""

import dataclasses
import json

import pytest

from maw_reranker.config.files import ConfigError
from maw_reranker.experiments.study import StudyOptions, apply_quick, plan_trainings, run_study
from tests.train.helpers import tiny_model_dir, write_task


def study(tmp_path, **overrides):
    task = write_task(tmp_path / "task")
    data = {"dataset": str(task["dataset"]), "split": "train", "candidates": str(task["run"])}
    base = dict(
        name="tiny", model=str(tiny_model_dir(tmp_path / "model")), seeds=[0], baseline="topk",
        train={"max_length": 32, "trainable": "top", "top_layers": 1, "num_negatives": 3, "batch_size": 4,
               "max_steps": 2, "checkpoint_every": 0, "report_to": [], "progress": False, "lr": 1e-3},
        eval={"progress": False, "standard_measures": False, "batch_size": 16, "plots": False},
        protocols=[{"name": "self", "train": dict(data), "test": {**data, "dataset_name": "tiny-test"}}],
        variants=[{"name": "topk", "train": {"maw": None}},
                  {"name": "maw_project", "train": {"maw": {"gating_mode": "learned", "depth_dim": 2,
                                                            "depth_source": "project", "depth_rank": 2}}},
                  {"name": "lora_matched", "train": {"maw": None, "top_lora": True, "lora_r": "match:maw_project"}}],
        quick={"seeds": [5], "train": {"max_steps": 1}},
        models_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "exp"), n_resamples=100)
    base.update(overrides)
    return StudyOptions(**base)


def test_study_trains_evaluates_and_reports(tmp_path):
    options = study(tmp_path)
    result = run_study(options)
    assert [t.done for t in result.trainings] == [True] * 3
    report = result.report.read_text()
    assert "## self" in report and "| lora_matched | 1 |" in report and "maw_project" in report
    summary = json.loads((tmp_path / "exp" / "tiny-test-train" / "_suites" / "tiny-self" / "summary.json").read_text())
    assert set(summary["comparisons"]) == {"maw_project", "lora_matched"}
    params = {t.variant: json.loads((tmp_path / "runs" / "tiny" / "self" / t.variant / "seed_0" /
                                     "train_summary.json").read_text())["parameters"] for t in result.trainings}
    lora, maw = params["lora_matched"]["lora"], params["maw_project"]["maw"]
    assert 0 < maw and abs(lora - maw) / maw < 0.6  # the closest rank; every report prints the counts
    # same trainable layers as the baseline, plus as many extra parameters as MAW adds: a parameter-count control
    assert params["lora_matched"]["trainable"] == params["topk"]["trainable"] + lora
    assert params["maw_project"]["trainable"] == params["topk"]["trainable"] + maw
    assert f"{params['topk']['trainable']:,}" in report
    mtime = (tmp_path / "runs" / "tiny" / "self" / "topk" / "seed_0" / "train_summary.json").stat().st_mtime
    run_study(options)  # complete trainings and runs are reused
    assert (tmp_path / "runs" / "tiny" / "self" / "topk" / "seed_0" / "train_summary.json").stat().st_mtime == mtime


def test_quick_runs_apart_and_plan_errors(tmp_path):
    options = study(tmp_path)
    quick = apply_quick(options)
    assert quick.name == "tiny-quick" and quick.seeds == [5] and quick.train["max_steps"] == 1
    assert quick.train["max_length"] == 32  # mappings merge key by key
    assert quick.output_dir == str(tmp_path / "exp" / "_quick")  # its evaluation runs never block the study's
    assert len(plan_trainings(options)) == 3
    with pytest.raises(ConfigError, match="earlier variant"):
        plan_trainings(study(tmp_path / "b", variants=[{"name": "topk", "train": {"lora_r": "match:later"}}]))
    with pytest.raises(ConfigError, match="baseline"):
        plan_trainings(study(tmp_path / "c", baseline="nope"))
    with pytest.raises(ConfigError, match="lrr"):
        plan_trainings(study(tmp_path / "d", train={"lrr": 1}))
    with pytest.raises(ConfigError, match="evaluation.*bogus"):
        plan_trainings(study(tmp_path / "e", eval={"bogus": 1}))
    with pytest.raises(ValueError, match="quick.*trian"):
        study(tmp_path / "f", quick={"trian": {}})
    without_test = [{"name": "self", "train": {"dataset": "x"}}]
    with pytest.raises(ConfigError, match="study protocol 'self': option 'test' must be a mapping of dataset options "
                                          "\\(its test set, e.g. test: \\{dataset: scifact\\}\\), got None"):
        plan_trainings(study(tmp_path / "g", protocols=without_test))
    with pytest.raises(ConfigError, match="study protocol 'self': option 'train' must be a mapping.*got 'scifact'"):
        plan_trainings(study(tmp_path / "h", protocols=[{"name": "self", "train": "scifact", "test": {}}]))


def test_changed_settings_are_refused_and_an_interrupted_training_resumes(tmp_path):
    import dataclasses

    options = study(tmp_path, variants=[{"name": "topk", "train": {"maw": None}}])
    run_study(options)
    changed = dataclasses.replace(options, train={**options.train, "max_steps": 3})
    with pytest.raises(ConfigError, match="other settings.*max_steps"):
        run_study(changed)
    summary = tmp_path / "runs" / "tiny" / "self" / "topk" / "seed_0" / "train_summary.json"
    summary.unlink()  # as if killed after its last checkpoint, before the summary
    result = run_study(options)
    assert summary.is_file() and result.trainings[0].done


def test_untouched_checkpoint_is_evaluated_once_and_every_variant_compared_against_it(tmp_path):
    options = study(tmp_path, seeds=[0, 1], untouched="untouched",
                    variants=[{"name": "topk", "train": {"maw": None}},
                              {"name": "topk_long", "train": {"maw": None, "max_steps": 3}}])
    # a quick run first: its evaluation of the untouched checkpoint (other settings, same seed) stays apart
    run_study(dataclasses.replace(options, quick={"seeds": [0], "eval": {"max_queries": 2}}, quick_run=True))
    result = run_study(options)
    assert len(result.trainings) == 4  # the untouched checkpoint is never trained
    dataset = tmp_path / "exp" / "tiny-test-train"
    assert sorted(p.name for p in (dataset / "untouched").iterdir()) == ["seed_0"]  # nothing random: one run
    against = json.loads((dataset / "_suites" / "tiny-self-vs-untouched" / "summary.json").read_text())
    assert set(against["comparisons"]) == {"topk", "topk_long"}
    assert set(json.loads((dataset / "_suites" / "tiny-self" / "summary.json").read_text())["comparisons"]) == {
        "topk_long", "untouched"}
    assert "Against the untouched checkpoint (`untouched`)" in result.report.read_text()
    # the baseline may be the untouched checkpoint itself: then one summary, against it
    only = run_study(dataclasses.replace(options, baseline="untouched"))
    assert set(json.loads((dataset / "_suites" / "tiny-self" / "summary.json").read_text())["comparisons"]) == {
        "topk", "topk_long"} and not only.untouched
    with pytest.raises(ConfigError, match="untouched 'topk' is also the name of a trained variant"):
        plan_trainings(dataclasses.replace(options, untouched="topk"))
    with pytest.raises(ConfigError, match="baseline 'nope' is not one of the variants.*nor untouched 'untouched'"):
        plan_trainings(dataclasses.replace(options, baseline="nope"))
