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

An object of a kind the model does not read, or of another apiVersion (a Knative
`serving.knative.dev/v1` Service is not the core/v1 Service a KIngress names),
is skipped but not silently: it is logged, listed by `FileSource.ignored()`, and
printed by `validate`. It is no problem: a folder of `kubectl get -o yaml`
output holds many such objects.

`FileSource.run(sink, ready)` is the `sources.base.Source` shape: it opens the
watch, reads every file a part at a time into `sink.stage`, loads them, sets
`ready`, and then submits each edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bulk import bulk_allocation
from ..model import ObjectKey, Problem, RawObject, yamltext
from ..model.kinds import Ident, accepts
from .base import Sink
from .file_owners import Definitions
from .file_state import FileState, Flush
from .file_watch import SUFFIXES, blank, edits_of, unreadable

log = logging.getLogger(__name__)

# Files read per part of the first read: each part is staged and its parsed YAML let
# go before the next is read (25,000 objects' worth at once is ~80 MB).
FILES_PER_PART = 200
# How long a file that became empty keeps its objects serving: an editor that saves in
# place truncates the file, then writes it.
EMPTY_GRACE = 2.0
# How often the folder is looked at while nothing happens (is it still there?).
POLL_INTERVAL = 1.0
_SEPARATOR = re.compile(r"^---", re.MULTILINE)

Changes = dict[Ident, RawObject | None]


@dataclass(frozen=True, slots=True, order=True)
class Ignored:
    """An object in a file that the model does not read: said, but not a problem."""

    origin: str
    kind: str
    name: str  # ns/name
    why: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.kind} {self.name} skipped: {self.why}"


@dataclass(slots=True)
class Parsed:
    """One file's documents: the objects read, the problems found, the objects skipped."""

    objects: dict[Ident, RawObject] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


@dataclass(slots=True)
class FileBatch:
    """What one (re)read produced: object changes, and the problems of the files read."""

    changes: Changes = field(default_factory=dict)
    problems: dict[Path, list[Problem]] = field(default_factory=dict)


def parse_documents(path: Path, text: str) -> Parsed:
    """Objects of the kinds we read from one file's YAML documents; problems for the rest."""
    origin = str(path)
    parsed = Parsed()
    try:
        docs = load_documents(text)
    except yamltext.YamlError as e:
        parsed.problems.append(Problem(origin, "file", "", "", f"not valid YAML: {e}"))
        return parsed
    for index, doc in enumerate(_flatten(docs)):
        if doc is None:
            continue
        read = _raw_object(origin, index, doc)
        if isinstance(read, Problem):
            parsed.problems.append(read)
        elif isinstance(read, Ignored):
            parsed.ignored.append(read)
        else:
            if read.ident in parsed.objects:
                parsed.problems.append(
                    Problem(
                        origin,
                        read.kind,
                        str(read.key),
                        "metadata.name",
                        "is defined twice in this file",
                    )
                )
            parsed.objects[read.ident] = read
    return parsed


def load_documents(text: str) -> list[Any]:
    """Every YAML document in `text`.

    yaml-rs (Rust) parses these files about 14x faster than PyYAML's C loader,
    which decides cold start with thousands of files. It returns a list for a
    multi-document stream and the document itself otherwise, so the separator
    tells a stream from a single document that happens to be a list.
    """
    # With limits on size, depth and alias expansion (model/yamltext.py).
    return yamltext.documents(text)


def _flatten(docs: Iterable[Any]) -> Iterable[Any]:
    """`kind: List` documents (as `kubectl get -o yaml` prints) hold their objects in `items`."""
    for doc in docs:
        if (
            isinstance(doc, Mapping)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            yield from doc["items"]
        else:
            yield doc


def _raw_object(origin: str, index: int, doc: Any) -> RawObject | Problem | Ignored:
    where = f"document {index + 1}"
    if not isinstance(doc, Mapping):
        return Problem(origin, "file", where, "", "must be a mapping (a Kubernetes object)")
    kind = doc.get("kind")
    meta = doc.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, Mapping) or not meta.get("name"):
        return Problem(origin, "file", where, "", "needs kind and metadata.name")
    accepted = accepts(kind, str(doc.get("apiVersion") or ""))
    if not accepted.ok:
        key = ObjectKey(str(meta.get("namespace") or "default"), str(meta["name"]))
        return Ignored(origin, kind, str(key), accepted.why)
    return RawObject.from_dict(doc, origin)


class FileSource:
    """Owns the view of the files: `run` feeds a sink; `read_all`/`reread` read by hand.

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
        self._files_per_part = files_per_part
        self._grace = EMPTY_GRACE if empty_grace is None else empty_grace
        self._poll = POLL_INTERVAL if poll_interval is None else poll_interval
        self._ignored: dict[Path, list[Ignored]] = {}
        # Each file's own problems (its parse, its documents); duplicates are added on report.
        self._problems: dict[Path, list[Problem]] = {}
        self._state = FileState(state_dir, path) if state_dir is not None else None
        self._defs = Definitions(self._state.claims() if self._state is not None else None)
        # Files that became empty while holding objects: since when (time.monotonic()).
        self._empty_since: dict[Path, float] = {}
        self._healthy: bool | None = None
        self._flushing: asyncio.Future[None] | None = None

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return [self.path] if self.path.exists() else []

    def check(self) -> None:
        """Raise FileNotFoundError, naming the path, if there is nothing to read."""
        if not self.path.exists():
            raise FileNotFoundError(
                f"{self.path} does not exist: give a YAML file or a directory of them"
            )

    def ignored(self) -> list[Ignored]:
        """Every object skipped in the files as they are now, by file."""
        return sorted(i for items in self._ignored.values() for i in items)

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
                        self._submit(sink, self._everything())
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
                await asyncio.wait({pending}, timeout=self._timeout())
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
                paths |= self._due()
                if paths:
                    self._submit(sink, paths)
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
            for part in self.read_in_parts():
                _report(sink, part)
                sink.stage(part.changes)
                objects += len(part.changes)
                files += len(part.problems)
                problems += sum(len(ps) for ps in part.problems.values())
            self._defs.owners.settle()
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

    def _submit(self, sink: Sink, paths: set[Path]) -> None:
        batch = self.reread(paths)
        _report(sink, batch)
        sink.submit(batch.changes)  # also when empty: problems are reported anew
        self._saved()

    def _saved(self) -> None:
        """Keep what was read in the state folder, in the background."""
        if self._state is None:
            return
        self._state.set_claims(self._defs.owners.disputed())
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
        if not why and empty and self._healthy is False and any(self._defs.by_file.values()):
            # Made again, not yet filled: withdrawing everything now would be an outage.
            return "is empty; the last good state keeps serving until files appear"
        return why

    def _everything(self) -> set[Path]:
        return set(self.files()) | set(self._defs.by_file) | set(self._problems)

    def _timeout(self) -> float:
        if not self._empty_since:
            return self._poll
        due = min(self._empty_since.values()) + self._grace - time.monotonic()
        return max(0.0, min(due, self._poll))

    def _due(self) -> set[Path]:
        now = time.monotonic()
        return {p for p, since in self._empty_since.items() if now - since >= self._grace}

    # -- reading -------------------------------------------------------------------------

    def read_all(self) -> FileBatch:
        self.check()
        return self.reread(self.files())

    def read_in_parts(self, files_per_part: int | None = None) -> Iterator[FileBatch]:
        """`read_all`, a part at a time: the caller takes each part in and lets its parsed
        YAML go before the next is read."""
        self.check()
        files = self.files()
        step = files_per_part or self._files_per_part
        for at in range(0, len(files), step):
            yield self.reread(files[at : at + step])

    def reread(self, paths: Iterable[Path]) -> FileBatch:
        batch = FileBatch()
        touched: set[Path] = set()  # files whose problems are to be said again
        for path in sorted(set(paths), key=str):  # str keys: Path's own order is slow
            self._reread_one(path, batch, touched)
        for path in touched:
            batch.problems[path] = [*self._problems.get(path, ()), *self._defs.duplicates(path)]
        return batch

    def _reread_one(self, path: Path, batch: FileBatch, touched: set[Path]) -> None:
        touched.add(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._gone(path, batch, touched)
            return
        except (OSError, UnicodeDecodeError) as e:
            why = f"cannot be read: {e}; {self._kept(path)}"
            self._problems[path] = [Problem(str(path), "file", "", "", why)]
            return
        if blank(text) and self._defs.holds(path) and self._written(path):
            return  # being written: what it held keeps serving, its problems as they were
        self._empty_since.pop(path, None)
        parsed = parse_documents(path, text)
        if any(p.kind == "file" for p in parsed.problems):
            self._unparsable(path, parsed, batch, touched)
            return
        self._take(path, parsed, batch, touched)
        if self._state is not None:
            self._state.remember(path, text)

    def _written(self, path: Path) -> bool:
        """Whether an empty `path` is still taken as being written (within the grace)."""
        now = time.monotonic()
        since = self._empty_since.setdefault(path, now)
        held = self._defs.holds(path)
        if now - since < self._grace:
            if since == now:
                log.warning(
                    "%s is empty: taken as being written, its %d objects keep serving for "
                    "%.1f s unless it gets content",
                    path,
                    held,
                    self._grace,
                )
            return True
        log.warning(
            "%s stayed empty for %.1f s: its %d objects are withdrawn", path, now - since, held
        )
        return False

    def _unparsable(self, path: Path, parsed: Parsed, batch: FileBatch, touched: set[Path]) -> None:
        """A file is taken as a whole: one with a broken document changes nothing it held."""
        why = self._kept(path)
        good = self._state.last_good(path) if self._state is not None else None
        if path not in self._defs.by_file and good is not None:
            restored = parse_documents(path, good.text)
            if not any(p.kind == "file" for p in restored.problems):
                self._take(path, restored, batch, touched)
                why = f"serving its last good version from {good.when()}"
        self._problems[path] = [
            dataclasses.replace(p, message=f"{p.message}; {why}") if p.kind == "file" else p
            for p in parsed.problems
        ]

    def _kept(self, path: Path) -> str:
        if self._defs.holds(path):
            return "what it held before keeps serving"
        return "nothing of this file is served (there is no last good version of it)"

    def _take(self, path: Path, parsed: Parsed, batch: FileBatch, touched: set[Path]) -> None:
        self._defs.replace(path, parsed.objects, batch.changes, touched)
        self._problems[path] = parsed.problems
        for skipped in parsed.ignored:
            log.info("%s", skipped)
        if parsed.ignored:
            self._ignored[path] = parsed.ignored
        else:
            self._ignored.pop(path, None)

    def _gone(self, path: Path, batch: FileBatch, touched: set[Path]) -> None:
        self._defs.replace(path, {}, batch.changes, touched)
        self._ignored.pop(path, None)
        self._problems.pop(path, None)
        self._empty_since.pop(path, None)
        if self._state is not None:
            self._state.forget(path)


def _report(sink: Sink, batch: FileBatch) -> None:
    for path, problems in batch.problems.items():
        sink.set_source_problems(str(path), problems)
