"""Small text helpers shared by every layer: id previews in messages, and file-name slugs."""

from __future__ import annotations

import re
from typing import Iterable


def preview(items: Iterable, limit: int = 10) -> str:
    """``"a, b, c, ... (+7 more)"``: enough ids for a message to be actionable without flooding it."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def slugify(text: str, empty: str = "x") -> str:
    """A file/folder name: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or empty
