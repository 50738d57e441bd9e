"""DDP on CPUs (gloo): two processes under `accelerate launch` train as one process with the same global batch, and a
run killed with SIGKILL resumes exactly.

The global batch is ``batch_size x processes``: every process builds the same global batch and takes its slice of
``batch_size`` groups, the loss is a mean over a process's groups and DDP averages the gradients, so 2 processes at
``batch_size: 2`` take the steps of 1 process at ``batch_size: 4`` (the tiny model has no dropout and learned gating
draws no random numbers, so the two agree to float precision).

``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher ignores
``--num_processes``); several CPU processes are ``accelerate launch --multi_gpu --num_processes 2`` with
``ACCELERATE_USE_CPU=1`` (torchrun underneath, the gloo backend), as here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maw_reranker.train import train
from tests.train.helpers import options, tiny_model_dir, write_task

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
# Dev evaluation runs on the main process only while the other waits; its best score is in the checkpoint.
COMMON = dict(maw={"gating_mode": "learned", "depth_dim": 4}, max_steps=6, checkpoint_every=2, lr=5e-3,
              warmup_steps=1, holdout_queries=3, dev_every=2, dev_measure="nDCG")
LOGGED = ("loss", "loss/rank", "grad_norm", "lr", "lr/maw", "epoch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, out: Path, *extra: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    # HF_HOME of its own: no accelerate default_config.yaml of the machine changes the launch (the model is local).
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               MAW_TEST_KILL_AT_STEP=str(kill_at), HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1",
               HF_HOME=str(config.parent / "hf_home"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(WORKER), "train", "--config", str(config),
           "--batch_size", "2", "--output_dir", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _rows(out: Path) -> dict[int, dict]:
    """Training rows by step; a dev evaluation's row (same step) is kept under the key "dev" of its step's row."""
    rows: dict[int, dict] = {}
    for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def test_two_processes_match_one_and_resume_exactly_after_kill_9(tmp_path):
    task = write_task(tmp_path / "task")
    model = tiny_model_dir(tmp_path / "model")
    single = train(options(tmp_path / "single", task, model, batch_size=4, **COMMON))
    expected = _rows(tmp_path / "single" / "out")

    settings = options(tmp_path, task, model, **COMMON).to_dict()
    settings = {k: settings[k] for k in ("model", "dataset", "split", "candidates", "num_negatives", "neg_rank_max",
                                         "max_steps", "lr", "maw_lr", "warmup_steps", "checkpoint_every",
                                         "report_to", "progress", "max_length", "seed", "maw", "holdout_queries",
                                         "dev_every", "dev_measure")}
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "ddp"

    killed = _launch(config, out, kill_at=5)  # rank 0 is killed -9 after step 5 (checkpoints at 2 and 4)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step_0000002", "step_0000004"]
    before = _rows(out)
    assert sorted(before) == [1, 2, 3, 4, 5]

    resumed = _launch(config, out, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((out / "train_config.json").read_text())
    assert info["processes"] == 2 and info["resumed_from"].endswith("step_0000004")
    after = _rows(out)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]  # the killed run's step 5 was recomputed, not kept twice
    for key in LOGGED:
        assert after[5][key] == before[5][key], key  # the resumed step 5 is the killed run's step 5, bit for bit
    for step in range(1, 7):
        row = after[step] if step > 4 else before[step]
        for key in LOGGED:
            assert row[key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
        if step % 2 == 0:
            assert row["dev"] == pytest.approx(expected[step]["dev"], rel=1e-5), step
    summary = json.loads((out / "train_summary.json").read_text())
    assert single.best_metric > 0 and summary["best_step"] == single.best_step
    assert summary["best_metric"] == pytest.approx(single.best_metric, rel=1e-5)
    assert resumed.stdout.count('"final_model"') == 1  # the summary line is printed by the main process only
