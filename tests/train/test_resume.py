"""A run killed mid-way and resumed from its last checkpoint reproduces the uninterrupted run's losses exactly."""

from __future__ import annotations

import json

import pytest

from maw_reranker.train import train
from tests.train.helpers import options, tiny_model_dir, write_task


class Killed(RuntimeError):
    pass


def test_resume_reproduces_uninterrupted_run(tmp_path):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    # router: Gumbel sampling consumes the torch RNG; random negatives and order consume the data RNG; an
    # epoch of 2 batches (batch 5, 12 groups) puts checkpoint 3 mid-epoch, so the data position matters too.
    common = dict(maw={"gating_mode": "router", "depth_dim": 4, "maw_strength": 0.5}, max_steps=8, batch_size=5,
                  checkpoint_every=3, lr=1e-3, warmup_steps=2, grad_accum=1)
    full = train(options(tmp_path / "full", task, model, **common))

    def kill_at_step_5(step, row):
        if step == 5:
            raise Killed("simulated kill")

    with pytest.raises(Killed):
        train(options(tmp_path / "killed", task, model, **common), callbacks=[kill_at_step_5])
    resumed = train(options(tmp_path / "killed", task, model, resume="latest", **common))
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]  # lost only the steps after checkpoint 3
    expected = {r["step"]: r for r in full.history}
    for row in resumed.history:
        for key in ("loss", "loss/rank", "lr", "lr/maw", "epoch"):
            assert row[key] == expected[row["step"]][key], (row["step"], key)


def test_resume_with_accumulation_mid_epoch(tmp_path):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    common = dict(maw={"gating_mode": "learned", "depth_dim": 4}, max_steps=4, batch_size=2, grad_accum=2,
                  checkpoint_every=2)
    full = train(options(tmp_path / "full", task, model, **common))
    with pytest.raises(Killed):
        train(options(tmp_path / "part", task, model, **common),
              callbacks=[lambda step, row: _raise() if step == 3 else None])
    resumed = train(options(tmp_path / "part", task, model, resume="latest", **common))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[2:]]


def _raise():
    raise Killed("simulated kill")


def test_fresh_start_refuses_existing_checkpoints(tmp_path):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    train(options(tmp_path / "o", task, model, max_steps=1))
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(options(tmp_path / "o", task, model, max_steps=1))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(options(tmp_path / "empty", task, model, max_steps=1, resume="latest"))


def _trained(tmp_path):
    """A complete 2-step training with a checkpoint per step: (task, model, output folder, checkpoint names)."""
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    train(options(tmp_path / "o", task, model, max_steps=2, checkpoint_every=1))
    out = tmp_path / "o" / "out"
    return task, model, out, sorted(p.name for p in (out / "checkpoints").iterdir())


def test_failed_overwrite_keeps_the_earlier_checkpoints(tmp_path):
    task, model, _, before = _trained(tmp_path)
    bad = write_task(tmp_path / "bad", no_positive=True)
    with pytest.raises(ValueError, match="no query has a positive"):
        train(options(tmp_path / "o", bad, model, max_steps=2, force=True))
    assert sorted(p.name for p in (tmp_path / "o" / "out" / "checkpoints").iterdir()) == before


def test_resume_drops_a_torn_last_metrics_line(tmp_path, caplog):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    common = dict(max_steps=4, checkpoint_every=2, holdout_queries=3, dev_every=2)
    with pytest.raises(Killed):
        train(options(tmp_path / "r", task, model, **common), callbacks=[lambda step, row: _raise() if step == 3 else None])
    metrics = tmp_path / "r" / "out" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "dev": {"nDCG')  # power loss mid-append
    resumed = train(options(tmp_path / "r", task, model, resume="latest", **common))
    assert resumed.steps == 4
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "dev" in r] == [2, 4] and str(metrics) in caplog.text
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def test_interrupted_overwrite_keeps_the_earlier_run_aside(tmp_path):
    task, model, out, before = _trained(tmp_path)
    with pytest.raises(Killed):
        train(options(tmp_path / "o", task, model, max_steps=4, force=True),
              callbacks=[lambda step, row: _raise() if step == 1 else None])
    assert not (out / "final").exists() and not (out / "train_summary.json").exists()  # nothing stale beside it
    assert sorted(p.name for p in (out / ".previous" / "checkpoints").iterdir()) == before
    train(options(tmp_path / "o", task, model, max_steps=4, force=True))
    assert not (out / ".previous").exists() and (out / "final").is_dir()


def test_resume_checks_the_checkpoint(tmp_path):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    train(options(tmp_path / "o", task, model, max_steps=3, checkpoint_every=3))
    with pytest.raises(ValueError, match="'max_steps' \\(2\\) is below the step of the checkpoint resumed \\(3"):
        train(options(tmp_path / "o", task, model, max_steps=2, resume="latest"))
    step = tmp_path / "o" / "out" / "checkpoints" / "step_0000003"
    rng = next(step.glob("random_states_*.pkl"))
    rng.write_bytes(rng.read_bytes()[:50])
    with pytest.raises(ValueError, match=f"{rng}: unreadable RNG state"):
        train(options(tmp_path / "o", task, model, max_steps=4, resume="latest"))
    (step / "trainer_state.json").write_text("{bad")
    with pytest.raises(ValueError, match="trainer_state.json: unreadable checkpoint state"):
        train(options(tmp_path / "o", task, model, max_steps=4, resume="latest"))


def test_a_second_interrupted_overwrite_keeps_the_complete_run(tmp_path):
    task, model, out, complete = _trained(tmp_path)
    for _ in range(2):
        with pytest.raises(Killed):
            train(options(tmp_path / "o", task, model, max_steps=4, force=True, checkpoint_every=1),
                  callbacks=[lambda step, row: _raise() if step == 2 else None])
    assert (out / ".previous" / "train_summary.json").is_file()
    assert sorted(p.name for p in (out / ".previous" / "checkpoints").iterdir()) == complete


def test_resume_keeps_the_best_dev_score_of_the_checkpoint_step(tmp_path):
    # dev and checkpoint at the same steps: the checkpoint of step 4 must hold step 4's dev score, or a run resumed
    # from it takes step 6 (worse than 4, better than 2) for the best and overwrites best/ with it.
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    common = dict(maw={"gating_mode": "learned", "depth_dim": 4}, max_steps=6, checkpoint_every=2, lr=5e-3,
                  warmup_steps=1, holdout_queries=3, dev_every=2, dev_measure="nDCG", batch_size=4)
    full = train(options(tmp_path / "full", task, model, **common))
    assert full.best_step == 4  # the case: dev(2) < dev(6) < dev(4)
    with pytest.raises(Killed):
        train(options(tmp_path / "killed", task, model, **common),
              callbacks=[lambda step, row: _raise() if step == 5 else None])
    state = json.loads((tmp_path / "killed" / "out" / "checkpoints" / "step_0000004" / "trainer_state.json")
                       .read_text())
    assert (state["best_step"], state["best_metric"]) == (4, full.best_metric)
    resumed = train(options(tmp_path / "killed", task, model, resume="latest", **common))
    assert (resumed.best_step, resumed.best_metric) == (full.best_step, full.best_metric)
    best = [json.loads((tmp_path / run / "out" / "best.json").read_text()) for run in ("full", "killed")]
    assert best[0] == best[1]
