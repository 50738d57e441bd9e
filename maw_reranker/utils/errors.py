"""The error kinds every layer can raise and the CLI tells apart."""

from __future__ import annotations

import errno


class OptionError(ValueError):
    """A bad option or config value (the CLI exits 2, as for a usage error); the message names the option."""


class DiskFullError(OSError):
    """A write into an output folder cut short by a full disk or quota (``errno`` ENOSPC or EDQUOT): its message
    names the folder, and the file being written when it is known."""

    def __init__(self, code: int, folder, file=None, detail: str = ""):
        super().__init__(code, "disk quota exceeded" if code == errno.EDQUOT else "no space left on device", str(folder))
        self.folder, self.file, self.detail = str(folder), (str(file) if file else None), detail

    def __str__(self) -> str:
        at = f" (at {self.file})" if self.file and self.file != self.folder else ""
        return f"{self.strerror} while writing {self.folder}{at}; free space there or choose another output"


def with_context(exc: BaseException, prefix: str) -> BaseException:
    """``exc`` with ``prefix: `` before its message, keeping its type (so the CLI still tells the kind apart)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        exc.strerror = f"{prefix}: {exc.strerror}"
    elif exc.args:
        exc.args = (f"{prefix}: {exc.args[0]}", *exc.args[1:])
    else:
        exc.args = (prefix,)
    return exc


_NETWORK_HINTS = ("NameResolutionError", "Failed to resolve", "Name or service not known", "Temporary failure in name",
                  "ConnectionError", "Connection refused", "Network is unreachable", "Max retries exceeded",
                  "timed out", "couldn't connect", "could not connect")


def network_reason(exc: BaseException, limit: int = 120) -> str:
    """A short reason for a failed download: "no network (HOST unreachable)" when the cause chain says so, else the
    first line of the message, cut to ``limit`` characters (never a whole exception repr)."""
    import re

    seen, chain = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if any(hint.lower() in text.lower() for hint in _NETWORK_HINTS):
        host = re.search(r"host='([^']+)'|https?://([^/\s'\"]+)", text)
        where = next((g for g in host.groups() if g), None) if host else None
        return f"no network ({where} unreachable)" if where else "no network"
    first = (str(chain[0]).strip().splitlines() or [type(chain[0]).__name__])[0]
    return first if len(first) <= limit else first[:limit - 3] + "..."
