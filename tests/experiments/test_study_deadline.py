"""The study's time guard (``time_budget_s``): a clean stop inside a training or before one, a partial report over
the complete trainings, and a later call that resumes and completes the study (issue 22 item 4)."""

import dataclasses
import json

import maw_reranker.experiments.study as study_module
import maw_reranker.train.trainer as trainer_module
from maw_reranker.experiments.study import plan_trainings, run_study
from tests.experiments.test_study import study


class Clock:
    """A fake ``time`` for the study module: only training steps move it (10 s a step of topk, 20 s of MAW)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def ticking_clock(monkeypatch, seconds_a_step) -> Clock:
    """The study's clock, moved by ``seconds_a_step(training options)`` at every training step."""
    clock = Clock()
    monkeypatch.setattr(study_module, "time", clock)
    real_train = trainer_module.train

    def ticking_train(opts, callbacks=None):
        def tick(step, row):
            clock.now += seconds_a_step(opts)
        return real_train(opts, callbacks=[tick, *(callbacks or [])])

    monkeypatch.setattr(trainer_module, "train", ticking_train)
    return clock


def test_time_guard_stops_cleanly_writes_a_partial_report_and_the_next_call_completes(tmp_path, monkeypatch):
    clock = ticking_clock(monkeypatch, lambda opts: 10.0 if "/topk/" in str(opts.output_dir) else 20.0)
    options = study(tmp_path, seeds=[0, 1], run_order="seed", time_budget_s=65,
                    train={**study(tmp_path).train, "max_steps": 3, "checkpoint_every": 1},
                    variants=[{"name": "topk", "train": {"maw": None}},
                              {"name": "maw_learned", "train": {"maw": {"gating_mode": "learned", "depth_dim": 2}}}])
    assert [(t.variant, t.seed) for t in plan_trainings(options)] == [
        ("topk", 0), ("maw_learned", 0), ("topk", 1), ("maw_learned", 1)]  # every variant before the next seed
    # topk seed 0: steps at 10, 20, 30 s (complete); maw_learned seed 0 starts at 30 s (estimate: topk's 30 s, so
    # 60 <= 65), its step 1 ends at 50 s (checkpointed), its step 2 at 70 s: past the budget, the guard stops it
    result = run_study(options)
    assert result.partial and [t.done for t in result.trainings] == [True, False, False, False]
    assert result.trainings[1].started  # its checkpoint of step 1: it resumes from there
    report = result.report.read_text()
    assert "**Partial**: 1 of 4 trainings complete" in report and "| topk | 1 |" in report
    assert "maw_learned |" not in report
    dataset = tmp_path / "exp" / "tiny-test-train"
    assert sorted(p.name for p in (dataset / "topk").iterdir()) == ["seed_0"]  # only the complete one evaluated

    # the next call: the same budget again (a fresh clock), then without a guard: it completes the study
    clock.now = 0.0
    # maw_learned seed 0 resumes (steps 2-3: 40 s); topk seed 1 is not started: its estimate (the longest training of
    # this call, 40 s) would end past the budget (80 > 65)
    again = run_study(options)
    assert again.partial and [t.done for t in again.trainings] == [True, True, False, False]
    steps = json.loads((tmp_path / "runs" / "tiny" / "self" / "maw_learned" / "seed_0" / "train_summary.json")
                       .read_text())
    assert steps["steps"] == 3 and steps["steps_this_session"] == 2  # resumed from its step-1 checkpoint
    final = run_study(dataclasses.replace(options, time_budget_s=None))
    assert not final.partial and all(t.done for t in final.trainings)
    report = final.report.read_text()
    assert "Partial" not in report and "| topk | 2 |" in report and "| maw_learned | 2 |" in report
    summary = json.loads((dataset / "_suites" / "tiny-self" / "summary.json").read_text())
    assert set(summary["comparisons"]) == {"maw_learned"}


def test_time_guard_zero_trains_nothing_and_still_reports(tmp_path):
    options = study(tmp_path, time_budget_s=0, untouched="untouched",
                    variants=[{"name": "topk", "train": {"maw": None}}])
    result = run_study(options)
    assert result.partial and not any(t.done for t in result.trainings)
    assert "**Partial**: 0 of 1 trainings complete" in result.report.read_text()


def test_the_last_step_past_the_budget_still_saves_the_training(tmp_path, monkeypatch):
    ticking_clock(monkeypatch, lambda opts: 10.0)
    options = study(tmp_path, seeds=[0, 1], time_budget_s=25, train={**study(tmp_path).train, "max_steps": 3},
                    variants=[{"name": "topk", "train": {"maw": None}}])
    result = run_study(options)  # steps at 10, 20, 30 s: the last ends past 25 s, and the training is kept
    assert [t.done for t in result.trainings] == [True, False] and result.partial
    assert "**Partial**: 1 of 2 trainings complete" in result.report.read_text()
