"""Knative objects from a YAML file or a directory of them, watched for edits.

Each file is read on its own and diffed against what it held before, so an edit
to one file yields changes only for the objects in it. A file is taken as a
whole: one that does not parse, or has a broken document (cut mid-write), changes
nothing of what it held and is reported with its line; with a state folder its
last good text outlives the process (`file_state`). A file that is deleted takes
its objects with it; one that becomes empty is taken as being written and keeps
its objects for `empty_grace` seconds first. When several files define one
object, the first to claim it is served, the same after a restart
(`file_owners`). A folder that cannot be read keeps what was read last serving.

Knative `serving.knative.dev/v1` Services and Configurations are read (the
serving stage turns them into Revisions and Routes); an object of a kind the
model does not read, or of another apiVersion, is skipped but not silently: it is logged, listed by `FileSource.ignored()`, and
printed by `validate`. It is no problem: a folder of `kubectl get -o yaml`
output holds many such objects.

`FileSource.run(sink, ready)` is the `sources.base.Source` shape: it opens the
watch, reads every file a part at a time into `sink.stage`, loads them, sets
`ready`, and then submits each edit.

This module is the run loop: the watch, the folder's health, the state folder's
writes. Turning one file's text into objects is `file_parse`; reading files and
diffing them against what each held, grace included, is `file_read`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from ..bulk import bulk_allocation
from .base import Sink
from .file_parse import Ignored, Parsed, load_documents, parse_documents
from .file_read import FileBatch, FileReader
from .file_state import FileState, Flush
from .file_watch import edits_of, unreadable

# Parsing and reading live apart (file_parse, file_read); they are imported from here.
__all__ = [
    "EMPTY_GRACE",
    "FILES_PER_PART",
    "POLL_INTERVAL",
    "FileBatch",
    "FileSource",
    "Ignored",
    "Parsed",
    "load_documents",
    "parse_documents",
]

log = logging.getLogger(__name__)

# Files read per part of the first read: each part is staged and its parsed YAML let
# go before the next is read (25,000 objects' worth at once is ~80 MB).
FILES_PER_PART = 200
# How long a file that became empty keeps its objects serving: an editor that saves in
# place truncates the file, then writes it.
EMPTY_GRACE = 2.0
# How often the folder is looked at while nothing happens (is it still there?).
POLL_INTERVAL = 1.0


class FileSource:
    """The folder source: `run` feeds a sink; `read_all`/`reread` read by hand.

    What the files hold is kept by a `FileReader`; this decides when to read them.
    `state_dir` keeps each file's last good text and the claim order of objects
    that several files define (see `file_state`), so a restart serves what the
    process before it did; without it nothing outlives the process.
    `empty_grace` is how long a file that became empty keeps its objects serving
    (an editor that saves in place truncates first, then writes); `poll_interval`
    how often the folder is looked at when nothing happens (is it still there?).
    Both default to the module's `EMPTY_GRACE` and `POLL_INTERVAL`.
    """

    def __init__(
        self,
        path: Path,
        *,
        files_per_part: int = FILES_PER_PART,
        state_dir: Path | None = None,
        empty_grace: float | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.path = path
        self._poll = POLL_INTERVAL if poll_interval is None else poll_interval
        self._state = FileState(state_dir, path) if state_dir is not None else None
        self._reader = FileReader(
            path,
            files_per_part=files_per_part,
            state=self._state,
            grace=EMPTY_GRACE if empty_grace is None else empty_grace,
        )
        self._healthy: bool | None = None
        self._flushing: asyncio.Future[None] | None = None

    def files(self) -> list[Path]:
        return self._reader.files()

    def check(self) -> None:
        """Raise FileNotFoundError, naming the path, if there is nothing to read."""
        self._reader.check()

    def ignored(self) -> list[Ignored]:
        """Every object skipped in the files as they are now, by file."""
        return self._reader.ignored()

    # -- reading by hand (file_read) -----------------------------------------------------

    def read_all(self) -> FileBatch:
        return self._reader.read_all()

    def read_in_parts(self, files_per_part: int | None = None) -> Iterator[FileBatch]:
        """`read_all`, a part at a time: the caller takes each part in and lets its parsed
        YAML go before the next is read."""
        return self._reader.read_in_parts(files_per_part)

    def reread(self, paths: Iterable[Path]) -> FileBatch:
        return self._reader.reread(paths)

    # -- the Source ----------------------------------------------------------------------

    async def run(self, sink: Sink, ready: asyncio.Event) -> None:
        """Load every file into `sink`, set `ready`, then submit each edit until cancelled.

        While the folder cannot be read (removed, no permission) the sink is told so
        and what was read last keeps serving; once it can, a new watch opens and
        every file is read again.
        """
        self.check()
        try:
            await self._run(sink, ready)
        finally:
            while self._flushing is not None and not self._flushing.done():
                await asyncio.wait([self._flushing])  # copies being written are finished

    async def _run(self, sink: Sink, ready: asyncio.Event) -> None:
        first = True
        while True:
            async with contextlib.aclosing(edits_of(self.path)) as edits:
                # The watch opens before the files are read, so that a file saved
                # meanwhile is read again once they are.
                pending = asyncio.ensure_future(anext(edits))
                try:
                    # `anext` registers the watch in its first step (watchfiles creates
                    # its notifier before it first awaits), which runs before this resumes.
                    await asyncio.sleep(0)
                    if first:
                        await self.load_into(sink)
                        ready.set()
                        first = False
                    else:
                        await self._submit(sink, self._reader.known())
                    self._saved()
                    self._health(sink, self._unreadable())
                except BaseException:
                    pending.cancel()
                    await asyncio.wait([pending])
                    raise
                await self._follow(sink, edits, pending)
            await asyncio.sleep(self._poll)  # before a new watch: never a busy loop

    async def _follow(
        self, sink: Sink, edits: AsyncIterator[set[Path]], pending: asyncio.Future[set[Path]]
    ) -> None:
        """Submit edits until the folder needs a new watch (it was unreadable and is back)."""
        try:
            while True:
                await asyncio.wait({pending}, timeout=self._reader.timeout(self._poll))
                paths: set[Path] = set()
                if pending.done():
                    try:
                        paths = pending.result()
                        pending = asyncio.ensure_future(anext(edits))
                    except Exception as e:  # the watch is gone, not the source
                        log.warning("watching %s stopped (%s); watching it again", self.path, e)
                        return
                why = self._unreadable()
                if why:
                    self._health(sink, why)
                    continue  # nothing is read: what was read last keeps serving
                if self._healthy is False:
                    return  # back: a watch on the folder as it is now, every file read
                paths |= self._reader.due()
                if paths:
                    await self._submit(sink, paths)
                    self._health(sink, "")
        finally:
            pending.cancel()
            await asyncio.wait([pending])

    async def load_into(self, sink: Sink) -> None:
        """The first complete state: every file, staged a part at a time, then loaded."""
        started = time.perf_counter()
        objects = files = problems = 0
        # Parsing and staging 10,000s of objects that live on: without the collector.
        with bulk_allocation():
            parts = self.read_in_parts()
            while (part := await asyncio.to_thread(next, parts, None)) is not None:
                _report(sink, part)
                sink.stage(part.changes)
                objects += len(part.changes)
                files += len(part.problems)
                problems += sum(len(ps) for ps in part.problems.values())
            self._reader.settle()
            await sink.load()
        log.info(
            "loaded %d objects from %d files in %s in %.0f ms: %d problems in the files, "
            "%d objects skipped (kinds or apiVersions not read)",
            objects,
            files,
            self.path,
            (time.perf_counter() - started) * 1000,
            problems,
            len(self.ignored()),
        )

    async def _submit(self, sink: Sink, paths: set[Path]) -> None:
        # Reading and parsing in a thread: a 4 MB file takes yaml-rs about 0.3 s, which
        # on the event loop would hold every stream still; in a thread, the loop keeps
        # its turns while the parser is in Rust.
        batch = await asyncio.to_thread(self.reread, paths)
        _report(sink, batch)
        sink.submit(batch.changes)  # also when empty: problems are reported anew
        self._saved()

    def _saved(self) -> None:
        """Keep what was read in the state folder, in the background."""
        if self._state is None:
            return
        self._state.set_claims(self._reader.disputed())
        if self._flushing is None or self._flushing.done():
            flush = self._state.take()
            if flush is not None:
                self._flushing = asyncio.ensure_future(self._write(self._state, flush))

    async def _write(self, state: FileState, flush: Flush) -> None:
        # A thread: each copy is fsynced (about 1 ms), 25,000 of them after a first
        # load would otherwise stall every stream for half a minute.
        state.done(flush, await asyncio.to_thread(state.write, flush))
        self._flushing = None
        self._saved()  # what was read meanwhile

    def _health(self, sink: Sink, why: str) -> None:
        self._healthy = not why
        sink.source_health(str(self.path), not why, why)

    def _unreadable(self) -> str:
        """Why the folder (or the one file) cannot be read now; "" when it can."""
        why, empty = unreadable(self.path)
        if not why and empty and self._healthy is False and self._reader.holds_any():
            # Made again, not yet filled: withdrawing everything now would be an outage.
            return "is empty; the last good state keeps serving until files appear"
        return why


def _report(sink: Sink, batch: FileBatch) -> None:
    for path, problems in batch.problems.items():
        sink.set_source_problems(str(path), problems)
