"""Anserini in a child process (retrieve/pyserini_env.run_child): Ctrl-C stops the child and reaches the caller as
KeyboardInterrupt; no Java needed (the child here is Python). The end-to-end Ctrl-C of a real Pyserini build is in
tests/retrieve/test_pyserini.py (skipped without Pyserini and Java)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from maw_reranker.retrieve.pyserini_env import run_child

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_ctrl_c_stops_the_child_and_is_raised(tmp_path, monkeypatch):
    import subprocess

    started = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # a Ctrl-C while the child runs
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_child(SLEEPER, "indexing into x")
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 10  # not the child's 60 s
    assert started and started[0].poll() is not None  # stopped, not left running


def test_the_childs_exit_is_told_apart():
    with pytest.raises(KeyboardInterrupt):  # the Ctrl-C reached the child's process group first
        run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT); "
                                         "import time; time.sleep(5)"], "indexing into x")
    with pytest.raises(RuntimeError, match=r"^indexing into /idx: python\S* exited with code 3 "):
        run_child([sys.executable, "-c", "raise SystemExit(3)"], "indexing into /idx")
    run_child([sys.executable, "-c", "pass"], "indexing into x")
