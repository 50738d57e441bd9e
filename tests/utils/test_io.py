"""Atomic outputs: umask permissions, stale temporaries of killed runs removed, folders swapped in whole."""

from __future__ import annotations

import os
import stat

import pytest

from maw_reranker.utils import io
from maw_reranker.utils.io import (
    AtomicDirectory,
    atomic_directory,
    atomic_write,
    current_umask,
    remove_stale_temps,
    write_json,
)


@pytest.fixture
def umask():
    """Set the process umask for a test, and restore it after."""
    saved = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "metrics.json", {"a": 1})
    with atomic_write(tmp_path / "plot.png", mode="wb") as handle:
        handle.write(b"\x89PNG")
    assert _mode(tmp_path / "metrics.json") == expected and _mode(tmp_path / "plot.png") == expected


def test_a_write_removes_the_stale_temporaries_of_its_output_only(tmp_path):
    stale_file = tmp_path / ".metrics.json.k1ll3d_x.tmp"
    stale_file.write_text('{"half": ')
    stale_dir = tmp_path / ".metrics.json.abcdefgh.tmp"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("x")
    kept = [".other.json.k1ll3d_x.tmp", ".metrics.json.bak.k1ll3d_x.tmp", ".metrics.json.tmp", ".gitignore"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert _hidden(tmp_path) == sorted(kept)
    assert (tmp_path / "metrics.json").read_text() == '{\n  "a": 1\n}\n'


def test_remove_stale_temps_of_a_whole_folder(tmp_path):
    (tmp_path / ".a.txt.12345678.tmp").write_text("")
    (tmp_path / ".run.abcdefgh.tmp").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".b.12345678.tmp").write_text("")  # subfolders are not searched
    (tmp_path / "a.txt").write_text("keep")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".a.txt.12345678.tmp", ".run.abcdefgh.tmp"]
    assert _hidden(tmp_path) == [] and (tmp_path / "sub" / ".b.12345678.tmp").exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_folder_moved_aside_by_an_interrupted_swap_is_restored(tmp_path):
    # Killed between the two renames of a swap: the old folder is aside, the new one not yet in place.
    aside = tmp_path / ".out.abcdefgh.old.tmp"
    aside.mkdir()
    (aside / "metrics.json").write_text("old")
    (tmp_path / ".out.ijklmnop.tmp").mkdir()
    remove_stale_temps(tmp_path, "out")
    assert (tmp_path / "out" / "metrics.json").read_text() == "old" and _hidden(tmp_path) == []
    # With the target in place, a folder left aside is removed (killed after the swap, before the clean-up).
    aside.mkdir()
    remove_stale_temps(tmp_path, "out")
    assert (tmp_path / "out" / "metrics.json").read_text() == "old" and _hidden(tmp_path) == []


def _old_output(tmp_path):
    out = tmp_path / "runs" / "eval1"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("old metrics")
    (out / "old-only.txt").write_text("x")
    return out


def test_atomic_directory_swaps_the_new_folder_in(tmp_path, umask):
    out = _old_output(tmp_path)
    with atomic_directory(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".eval1.") and tmp.name.endswith(".tmp")
        assert [p.name for p in tmp.iterdir()] == [io.OWNER_NAME]  # empty but for who builds it
        write_json(tmp / "metrics.json", {"nDCG@10": 0.5})
        (tmp / "logs").mkdir()
        (tmp / "logs" / "x.log").write_text("log")
        assert (out / "metrics.json").read_text() == "old metrics"  # untouched until the block ends
    assert sorted(p.name for p in out.iterdir()) == ["logs", "metrics.json"]  # old-only.txt is gone
    assert '"nDCG@10": 0.5' in (out / "metrics.json").read_text()
    assert _hidden(out.parent) == [] and _mode(out) == 0o755


def test_atomic_directory_creates_a_new_folder_and_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "new"
    with atomic_directory(out, sync=False) as tmp:
        (tmp / "f").write_text("1")
    assert (out / "f").read_text() == "1" and _hidden(out.parent) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_leaves_the_old_folder_intact_and_no_temporary(tmp_path, error):
    out = _old_output(tmp_path)
    with pytest.raises(error):
        with atomic_directory(out) as tmp:
            (tmp / "metrics.json").write_text("half")
            raise error("validation failed")
    assert (out / "metrics.json").read_text() == "old metrics" and (out / "old-only.txt").exists()
    assert _hidden(out.parent) == []


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = _old_output(tmp_path)
    real_rename, calls = os.rename, []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename into place
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        with atomic_directory(out) as tmp:
            (tmp / "metrics.json").write_text("new")
    assert (out / "metrics.json").read_text() == "old metrics" and _hidden(out.parent) == []


def test_a_redo_after_a_killed_run_starts_clean(tmp_path):
    out = _old_output(tmp_path)
    (out.parent / ".eval1.k1ll3d_1.tmp").mkdir()  # a build killed with SIGKILL
    (out.parent / ".eval1.k1ll3d_1.tmp" / "metrics.json").write_text("partial")
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("bad option")
    assert _hidden(out.parent) == [] and (out / "metrics.json").read_text() == "old metrics"


def test_atomic_directory_by_hand(tmp_path):
    out = _old_output(tmp_path)
    first = AtomicDirectory(out)
    tmp = first.begin()
    (tmp / "metrics.json").write_text("discarded")
    first.abort()
    first.abort()  # idempotent
    assert not tmp.exists() and (out / "metrics.json").read_text() == "old metrics"
    second = AtomicDirectory(out)
    (second.begin() / "metrics.json").write_text("new")
    assert second.commit() == out and (out / "metrics.json").read_text() == "new"
    with pytest.raises(RuntimeError, match="no temporary folder"):
        second.commit()


def test_atomic_directory_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out").read_text() == "a file" and _hidden(tmp_path) == []


def _owned_temp(parent, name, pid, host=None, start=None):
    import json
    import socket

    tmp = parent / f".{name}.{len(list(parent.iterdir())):08d}.tmp"
    tmp.mkdir(parents=True)
    (tmp / io.OWNER_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "start": start}))
    return tmp


def test_a_second_writer_keeps_the_first_ones_live_staging_folder(tmp_path):
    """Two runs into one output: the later one's start no longer removes the earlier one's staging folder (its
    owner, this process, is alive); each swaps its complete folder in, and no owner file is left in the output."""
    out = tmp_path / "eval1"
    first, second = AtomicDirectory(out), AtomicDirectory(out)
    (first.begin() / "metrics.json").write_text("first")
    (second.begin() / "metrics.json").write_text("second")
    assert first.tmp.is_dir()
    assert first.commit() == out and (out / "metrics.json").read_text() == "first"
    assert second.commit() == out and (out / "metrics.json").read_text() == "second"
    assert _hidden(out) == [] and _hidden(tmp_path) == []


def test_staging_folders_of_dead_owners_are_removed(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid no process holds now
    dead = _owned_temp(tmp_path, "eval1", proc.pid)
    reused = _owned_temp(tmp_path, "eval1", os.getpid(), start="1")  # this pid, but another process's start time
    elsewhere = _owned_temp(tmp_path, "eval1", proc.pid, host="another-host.invalid")
    alive = _owned_temp(tmp_path, "eval1", os.getpid(), start=io._process_start(os.getpid()))
    assert sorted(remove_stale_temps(tmp_path, "eval1")) == sorted([dead, reused])
    assert elsewhere.is_dir() and alive.is_dir()  # another host's owner cannot be checked: kept
