"""The error kinds every layer can raise and the CLI tells apart."""

from __future__ import annotations


class OptionError(ValueError):
    """A bad option or config value (the CLI exits 2, as for a usage error); the message names the option."""


def with_context(exc: BaseException, prefix: str) -> BaseException:
    """``exc`` with ``prefix: `` before its message, keeping its type (so the CLI still tells the kind apart)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        exc.strerror = f"{prefix}: {exc.strerror}"
    elif exc.args:
        exc.args = (f"{prefix}: {exc.args[0]}", *exc.args[1:])
    else:
        exc.args = (prefix,)
    return exc
