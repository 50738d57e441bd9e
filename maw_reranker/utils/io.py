"""Atomic outputs: readers never see a half-written file or folder, and an interrupted write leaves the old one intact.

Files (:func:`atomic_write`) and folders (:func:`atomic_directory`) are built in a hidden temporary sibling of the
target and renamed into place once complete. The temporaries are named::

    .<name>.<8 random characters>.tmp        a file or folder being built for <name>
    .<name>.<8 random characters>.old.tmp    the previous <name> folder, moved aside for the instant of a swap

A run killed with SIGKILL (or by power loss) leaves its temporary behind; the next write of the same output removes
it (:func:`remove_stale_temps`). A folder being built holds its owner (``.maw-owner.json``: pid, host, process start
time) until it is swapped in, and is removed only when that owner is dead: a second run writing the same output never
removes the first one's live staging folder (one on another host is kept: its owner cannot be checked). Outputs get the permissions the user's umask gives (typically 0644 for files and
0755 for folders), not the 0600/0700 of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import string
import tempfile
from pathlib import Path
from typing import IO, Iterator

from maw_reranker.utils.errors import DiskFullError, OptionError

log = logging.getLogger(__name__)
# What torch and safetensors say when a write is cut short by a full disk (their errors carry no errno).
DISK_FULL_HINTS = ("unexpected pos", "PytorchStreamWriter failed", "file write failed", "No space left on device",
                   "os error 28", "Disk quota exceeded", "os error 122")

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<rand>[a-z0-9_]{8})(?P<old>\.old)?\.tmp$")
_RAND_CHARS = string.ascii_lowercase + string.digits + "_"  # tempfile's alphabet, so one pattern covers both
OWNER_NAME = ".maw-owner.json"  # in a folder being built: who builds it


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc/<pid>/stat field 22), telling a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def _write_owner(folder: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
    (folder / OWNER_NAME).write_text(json.dumps(owner), encoding="utf-8")


def _owner_alive(folder: Path) -> bool | None:
    """Whether the writer recorded in ``folder`` still runs: True (alive, or on another host: cannot tell), False
    (dead), None (no readable owner: a file, or a folder of a writer that records none)."""
    try:
        owner = json.loads((folder / OWNER_NAME).read_text(encoding="utf-8"))
        pid = int(owner["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):
        return None
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)  # a reused pid is another process: dead


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` alone must set it to read it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem lets a folder be opened for fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_path(path: Path) -> None:
    """Remove a file or a folder (a symlink: only the link), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``; return the paths removed.

    ``name`` limits this to the temporaries of one output (``folder/name``); ``None`` removes every temporary in
    ``folder`` (not in its subfolders). A previous folder moved aside by an interrupted swap
    (``.<name>.*.old.tmp``) is moved back to ``folder/name`` when that is missing, since it is the last complete
    output; otherwise it is removed too. A folder whose recorded owner (:data:`OWNER_NAME`) is alive, or runs on
    another host, is kept: it is a concurrent writer's. A temporary without an owner (a file, or a folder of a writer
    that records none) is removed, so a concurrent :func:`atomic_write` of the same file can still lose its temporary.

    :func:`atomic_write` and :func:`atomic_directory` call it for their target before they start.
    """
    folder = Path(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: dict[str, list[tuple[Path, bool]]] = {}
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and (name is None or match["name"] == name):
            found.setdefault(match["name"], []).append((Path(entry.path), bool(match["old"])))
    removed = []
    for target_name, temps in found.items():
        target = folder / target_name
        backups = [p for p, old in temps if old and p.is_dir()]
        if backups and not os.path.lexists(target):
            newest = max(backups, key=lambda p: p.stat().st_mtime_ns)
            os.rename(newest, target)
            log.warning("%s: restored from %s, left by an interrupted swap", target, newest.name)
            temps = [(p, old) for p, old in temps if p != newest]
        for path, _ in temps:
            if path.is_dir() and _owner_alive(path):
                log.info("kept %s: its writer is still running (%s)", path, path / OWNER_NAME)
                continue
            remove_path(path)
            removed.append(path)
            log.info("removed a stale temporary of an interrupted run: %s", path)
    return removed


def disk_full_errno(exc: BaseException) -> int | None:
    """``errno.ENOSPC`` or ``errno.EDQUOT`` when ``exc`` (or what it was raised from) is a write that hit a full disk
    or quota: an ``OSError`` of that errno, or a library's error without one that says so (torch's ``RuntimeError``,
    safetensors' ``SafetensorError``: :data:`DISK_FULL_HINTS`); else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return exc.errno
        elif isinstance(exc, (RuntimeError, OSError)) or type(exc).__name__ == "SafetensorError":
            text = str(exc)
            if "Disk quota exceeded" in text or "os error 122" in text:
                return errno.EDQUOT
            if any(hint in text for hint in DISK_FULL_HINTS):
                return errno.ENOSPC
        exc = exc.__cause__
    return None


@contextlib.contextmanager
def disk_full_names(folder: str | Path) -> Iterator[None]:
    """Writes into the output folder ``folder``: one that fails for a full disk or quota (:func:`disk_full_errno`)
    raises :class:`~maw_reranker.utils.errors.DiskFullError` naming ``folder`` (and the file, when the error names
    one), from the original error; other errors pass through."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        file = next((e.filename for e in (exc, exc.__cause__) if isinstance(e, OSError) and e.filename), None)
        raise DiskFullError(code, folder, file, str(exc)) from exc


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temp file in the target folder, fsync, then rename over ``path``; on error the temp is removed.

    The file gets the umask's permissions; stale temporaries of ``path`` left by killed runs are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            with contextlib.suppress(OSError):  # some network filesystems refuse chmod: keep their default
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:  # name the file asked for, not the temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(path.parent)


class AtomicDirectory:
    """A folder built in a hidden temporary sibling and swapped in for ``path`` only once complete.

    Use :func:`atomic_directory` as a context manager, or drive it by hand::

        out = AtomicDirectory("runs/eval1")
        tmp = out.begin()        # a hidden folder beside runs/eval1 (only its owner file in it)
        ...                      # write the results under tmp
        out.commit()             # runs/eval1 now holds exactly what was written under tmp
        # on failure: out.abort() removes tmp and leaves runs/eval1 as it was
    """

    def __init__(self, path: str | Path, *, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        self.tmp: Path | None = None

    def begin(self) -> Path:
        """Create the temporary folder (after removing stale ones of ``path``) and return it."""
        if self.tmp is not None:
            raise RuntimeError(f"{self.path}: begin() was already called")
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} exists and is not a folder; remove it or choose another output")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent, self.path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        _write_owner(tmp)  # a concurrent writer of the same output keeps this folder while this process lives
        with contextlib.suppress(OSError):  # mkdtemp's 0700 would hide the output from colleagues
            os.chmod(tmp, 0o777 & ~current_umask())
        self.tmp = tmp
        return tmp

    def _sync_tree(self) -> None:
        for root, _dirs, files in os.walk(self.tmp):
            for name in files:
                with contextlib.suppress(OSError):
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            _fsync_dir(Path(root))

    def commit(self) -> Path:
        """Swap the temporary folder in for ``path`` (the previous ``path`` is removed) and return ``path``."""
        tmp = self._require_tmp()
        if self.sync:
            self._sync_tree()
        old = None
        if os.path.lexists(self.path):
            if not self.path.is_dir():
                raise NotADirectoryError(f"{self.path} exists and is not a folder; remove it or choose another output")
            rand = "".join(secrets.choice(_RAND_CHARS) for _ in range(8))
            old = self.path.parent / f".{self.path.name}.{rand}.old.tmp"
            os.rename(self.path, old)
        try:
            os.rename(tmp, self.path)
        except BaseException:
            if old is not None:
                os.rename(old, self.path)
            raise
        self.tmp = None
        with contextlib.suppress(FileNotFoundError):  # only after the swap: a staging folder always names its owner
            (self.path / OWNER_NAME).unlink()
        _fsync_dir(self.path.parent)
        if old is not None:
            remove_path(old)  # a symlinked output: only the link goes, not what it pointed to
        return self.path

    def abort(self) -> None:
        """Remove the temporary folder; ``path`` is left as it was. Safe to call more than once."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _require_tmp(self) -> Path:
        if self.tmp is None or not self.tmp.is_dir():
            raise RuntimeError(f"{self.path}: no temporary folder to commit (begin() not called, or already done)")
        return self.tmp

    def __enter__(self) -> Path:
        return self.begin()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


def atomic_directory(path: str | Path, *, sync: bool = True) -> AtomicDirectory:
    """Build the folder ``path`` atomically: ``with atomic_directory(path) as tmp:`` yields a hidden sibling folder,
    empty but for its owner file (:data:`OWNER_NAME`, removed at the swap); when the block ends normally it replaces ``path`` (any earlier ``path`` is removed), and when it raises
    (``KeyboardInterrupt`` included) the temporary is removed and an earlier ``path`` is left intact.

    ``sync`` fsyncs every file under the temporary folder before the swap, so the new folder survives a power loss
    once it is in place. Stale temporaries of ``path`` from killed runs are removed when it starts.
    """
    return AtomicDirectory(path, sync=sync)


def write_json(path: str | Path, data, indent: int = 2) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=indent, sort_keys=False, default=str)
        handle.write("\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")


def check_writable(path: str | Path, option: str, is_file: bool = False) -> None:
    """Raise ``PermissionError`` (or ``NotADirectoryError``/``IsADirectoryError``) naming ``option`` when ``path``
    could not be created or written: a folder, or with ``is_file`` a file (which must not be a folder).

    Checked before any work starts, so a run does not find out after an hour of scoring. The nearest existing
    ancestor must be a writable folder (a read-only file system counts as not writable).
    """
    target = Path(path).expanduser().absolute()
    if not str(path).strip():
        raise ValueError(f"option '{option}' is empty")
    if is_file and target.is_dir():
        raise IsADirectoryError(f"option '{option}': {target} is a folder; give a file name")
    probe = target.parent if is_file else target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"option '{option}': {probe} is a file, not a folder (needed for {target})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"option '{option}': {probe} is not writable (needed for {target})")
    read_only = False
    with contextlib.suppress(OSError):
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    if read_only:
        raise PermissionError(f"option '{option}': {probe} is on a read-only file system (needed for {target})")


def check_not_an_input(outputs: dict, inputs: dict) -> None:
    """Refuse any output path (option -> path) that is one of the inputs (option -> path) or lies inside an input
    folder (a BEIR folder's corpus, a model directory): every path is resolved first, so links and ``..`` count."""
    sources = {name: Path(path).expanduser().resolve() for name, path in inputs.items() if path}
    for out_name, out_path in outputs.items():
        target = Path(out_path).expanduser().resolve()
        same = next((name for name, source in sources.items() if source == target), None)
        inside = next((name for name, source in sources.items() if source.is_dir() and source in target.parents), None)
        if same or inside:
            name = same or inside
            raise OptionError(f"option '{out_name}' ({target}) {'is' if same else 'lies inside'} option '{name}' "
                              f"({sources[name]}), an input: it would be overwritten; write it elsewhere")
