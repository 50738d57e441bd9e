"""Atomic file writing: readers never see a half-written file, and an interrupted write leaves the old one intact."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temp file in the target folder, fsync, then rename over ``path``; on error the temp is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data, indent: int = 2) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=indent, sort_keys=False, default=str)
        handle.write("\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
