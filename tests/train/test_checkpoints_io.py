"""metrics.jsonl on resume: a torn last line (power loss mid-append) is dropped with a warning naming the file; a
corrupt line elsewhere is an error naming file and line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from maw_reranker.data import DataFormatError
from maw_reranker.train import checkpoints

ROWS = [{"step": 10, "dev": {"nDCG@10": 0.31}}, {"step": 20, "dev": {"nDCG@10": 0.35}},
        {"step": 30, "dev": {"nDCG@10": 0.36}}]


def _write(path, rows, tail: bytes = b"") -> None:
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + tail)


@pytest.mark.parametrize("tail", [b'{"step": 40, "dev": {"nDC', b'{"step": 40}\x00\x00', b"\x00" * 64 + b"\n",
                                  b'{"step": 4\xc3'], ids=["cut", "cut-then-nul", "nul-padding", "cut-in-a-character"])
def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog, tail):
    path = tmp_path / "metrics.jsonl"
    _write(path, ROWS, tail)
    with caplog.at_level(logging.WARNING):
        assert checkpoints.read_metrics(path) == ROWS
    torn = tail.strip(b"\x00\n") != b""
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (len(warned) == 1 and warned[0].startswith(f"{path}:4: dropping a torn last line")) if torn else not warned


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, ROWS[:1], b'{"step": 20, "dev": \n' + (json.dumps(ROWS[2]) + "\n").encode())
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: invalid JSON")):
        checkpoints.read_metrics(path)
    _write(path, ROWS[:1], b"[20]\n" + (json.dumps(ROWS[2]) + "\n").encode())
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: expected a JSON object, got list")):
        checkpoints.read_metrics(path)


def test_a_missing_metrics_file_has_no_rows(tmp_path):
    assert checkpoints.read_metrics(tmp_path / "metrics.jsonl") == []
    assert checkpoints.truncate_metrics(tmp_path / "metrics.jsonl", 5) == []
    assert not (tmp_path / "metrics.jsonl").exists()


def test_truncate_keeps_rows_up_to_the_resumed_step_and_repairs_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write(path, ROWS, b'{"step": 40, "de')
    with caplog.at_level(logging.WARNING):
        assert checkpoints.truncate_metrics(path, 20) == ROWS[:2]
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in ROWS[:2])
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # rewritten in place, no temporary left


class _OneProcess:
    """The part of accelerate's Accelerator that save_checkpoint uses, for a single process."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder, safe_serialization=True):
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def test_a_save_removes_the_folders_of_saves_killed_earlier(tmp_path):
    root = checkpoints.checkpoint_root(tmp_path)
    for step in (5, 10):  # saves killed with SIGKILL at steps 5 and 10
        (root / f".tmp-step_{step:07d}").mkdir(parents=True)
        (root / f".tmp-step_{step:07d}" / "model.safetensors").write_bytes(b"half")
    (root / ".keep-me").mkdir()
    final = checkpoints.save_checkpoint(_OneProcess(), checkpoints.TrainerState(step=20), tmp_path, keep=0)
    assert sorted(p.name for p in root.iterdir()) == [".keep-me", "step_0000020"]
    assert checkpoints.complete_checkpoints(tmp_path) == [final]
