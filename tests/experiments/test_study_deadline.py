"""The study's time guard (``time_budget_s``): a clean stop inside a training or before one, a partial report over
the complete trainings, and a later call that resumes and completes the study (issue 22 item 4)."""

import dataclasses
import json

import maw_reranker.experiments.study as study_module
import maw_reranker.train.trainer as trainer_module
from maw_reranker.experiments.study import plan_trainings, run_study
from tests.experiments.test_study import study


class Clock:
    """A fake ``time`` for the study module: 10 s pass at every training step, nothing else moves it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_time_guard_stops_cleanly_writes_a_partial_report_and_the_next_call_completes(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(study_module, "time", clock)
    real_train = trainer_module.train

    def ticking_train(opts, callbacks=None):
        def tick(step, row):
            clock.now += 10.0
        return real_train(opts, callbacks=[tick, *(callbacks or [])])

    monkeypatch.setattr(trainer_module, "train", ticking_train)
    options = study(tmp_path, seeds=[0, 1], run_order="seed", time_budget_s=45,
                    train={**study(tmp_path).train, "max_steps": 3, "checkpoint_every": 1},
                    variants=[{"name": "topk", "train": {"maw": None}},
                              {"name": "maw_learned", "train": {"maw": {"gating_mode": "learned", "depth_dim": 2}}}])
    assert [(t.variant, t.seed) for t in plan_trainings(options)] == [
        ("topk", 0), ("maw_learned", 0), ("topk", 1), ("maw_learned", 1)]  # every variant before the next seed
    # topk seed 0: steps at 10, 20, 30 s (complete); maw_learned seed 0 starts at 30 s (no estimate yet), its step 1
    # ends at 40 s (checkpointed), its step 2 at 50 s: past the budget, the guard stops it there
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
    again = run_study(options)  # maw_learned seed 0 resumes (steps 2-3: 20 s), topk seed 1 (30 s): 50 s > 45
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
