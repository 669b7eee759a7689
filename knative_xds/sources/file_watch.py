"""Watching a folder (or one file) of YAML for edits, and telling whether it can be read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles

SUFFIXES = (".yaml", ".yml", ".json")


async def edits_of(path: Path, *, step_ms: int = 2) -> AsyncIterator[set[Path]]:
    """The files changed, a set each time; `step_ms` of quiet ends a burst of writes.

    Under a steady stream of edits a set still goes out every 50 ms, so a busy
    folder delays no edit by more than that.
    """
    # A single file is watched through its folder: editors that save by renaming
    # a new file into place would otherwise leave us watching a deleted inode.
    single = not path.is_dir()
    target = path.parent if single else path
    watch = watchfiles.awatch(target, debounce=50, step=step_ms, recursive=not single)
    async with contextlib.aclosing(watch):  # the notifier is released when we are
        async for events in watch:
            paths = {Path(p) for _, p in events}
            if single:
                paths = {path} if any(p.name == path.name for p in paths) else set()
            else:
                paths = {p for p in paths if p.suffix in SUFFIXES}
            if paths:
                yield paths


def unreadable(path: Path) -> tuple[str, bool]:
    """Why `path` (a folder, or one file) cannot be read now ("" when it can), and
    whether it is an empty folder."""
    try:
        if not path.is_dir():
            os.stat(path)
            return ("" if path.is_file() else "is no longer a file"), False
        with os.scandir(path) as entries:
            return "", next(entries, None) is None
    except OSError as e:
        return f"cannot be read: {e.strerror or e}", False


def blank(text: str) -> bool:
    """Nothing but blank lines, comments and document markers: a file being written."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in ("---", "..."):
            return False
    return True
