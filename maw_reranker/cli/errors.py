"""One line per failure: what went wrong and where (file, line, option), never a traceback unless asked.

``--debug`` (or ``MAW_RERANK_DEBUG=1``) lets the exception propagate with its traceback.
"""

from __future__ import annotations

import errno
import os

from maw_reranker.utils.errors import DiskFullError
from maw_reranker.utils.io import disk_full_errno

DEBUG_ENV = "MAW_RERANK_DEBUG"
_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "not a folder",
}


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def interrupted(exc: BaseException) -> bool:
    """A Ctrl-C that a library re-raised as another error (transformers' lazy imports turn it into an ImportError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException) -> str:
    """The one-line message for ``exc``."""
    return " | ".join(line.strip() for line in _describe(exc).splitlines() if line.strip())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DiskFullError):  # names the output folder and the file
        return str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno in _OS_REASONS:
        where = exc.filename if exc.filename is not None else ""
        also = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
        return f"{_OS_REASONS[exc.errno]}: {where}{also}".rstrip(": ")
    if isinstance(exc, (ValueError, OSError)):  # our own errors name the file/line/option already
        return str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if disk_full_errno(exc) is not None:  # torch's RuntimeError, safetensors' SafetensorError: no errno
        return f"a write failed, most likely because the disk is full ({text})"
    return f"{type(exc).__name__}: {text} (unexpected: --debug shows the traceback)"
