"""Knative objects from a YAML file or a directory of them, watched for edits.

Each file is read on its own and diffed against what it held before, so an edit
to one file yields changes only for the objects in it. A file that does not
parse keeps its last good objects serving and is reported with its line; a file
that is deleted takes its objects with it.

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
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles
import yaml_rs

from ..bulk import bulk_allocation
from ..model import ObjectKey, Problem, RawObject
from ..model.kinds import Ident, accepts
from .base import Sink

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
# Files read per part of the first read: each part is staged and its parsed YAML let
# go before the next is read (25,000 objects' worth at once is ~80 MB).
FILES_PER_PART = 200
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
    except yaml_rs.YAMLDecodeError as e:
        lines = str(e).splitlines()
        summary = f"{lines[0]}: {lines[-1]}" if len(lines) > 1 else str(e)
        parsed.problems.append(Problem(origin, "file", "", "", f"not valid YAML: {summary}"))
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
    # Timestamps stay strings, as the Kubernetes API serves them.
    loaded = yaml_rs.loads(text, parse_datetime=False)
    if isinstance(loaded, list) and _SEPARATOR.search(text):
        return loaded
    return [loaded]


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
    """Owns the view of the files: `run` feeds a sink; `read_all`/`reread` read by hand."""

    def __init__(self, path: Path, *, files_per_part: int = FILES_PER_PART) -> None:
        self.path = path
        self._files_per_part = files_per_part
        self._by_file: dict[Path, dict[Ident, bytes]] = {}
        self._owner: dict[Ident, Path] = {}
        self._ignored: dict[Path, list[Ignored]] = {}

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
        """Load every file into `sink`, set `ready`, then submit each edit until cancelled."""
        self.check()
        async with contextlib.aclosing(self._edits()) as edits:
            # The watch opens before the first read, so that a file saved while the
            # first state is read and loaded is read again once it is.
            first = asyncio.ensure_future(anext(edits))
            try:
                # `anext` registers the watch in its first step (watchfiles creates its
                # notifier before it first awaits), which runs before this resumes.
                await asyncio.sleep(0)
                await self.load_into(sink)
                ready.set()
                self._submit(sink, await first)
            finally:
                first.cancel()  # if it is not done: the run ends before any edit came
                await asyncio.wait([first])
            async for paths in edits:
                self._submit(sink, paths)

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
        for path in sorted(set(paths), key=str):  # str keys: Path's own order is slow
            self._reread_one(path, batch)
        return batch

    def _reread_one(self, path: Path, batch: FileBatch) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._replace(path, {}, batch)
            self._ignored.pop(path, None)
            batch.problems[path] = []
            return
        except (OSError, UnicodeDecodeError) as e:
            batch.problems[path] = [Problem(str(path), "file", "", "", f"cannot be read: {e}")]
            return
        parsed = parse_documents(path, text)
        if any(p.kind == "file" and not p.key for p in parsed.problems):
            batch.problems[path] = parsed.problems  # unparsable: its last good objects serve
            return
        self._replace(path, parsed.objects, batch, parsed.problems)
        batch.problems[path] = parsed.problems
        for skipped in parsed.ignored:
            log.info("%s", skipped)
        if parsed.ignored:
            self._ignored[path] = parsed.ignored
        else:
            self._ignored.pop(path, None)

    def _replace(
        self,
        path: Path,
        objects: dict[Ident, RawObject],
        batch: FileBatch,
        problems: list[Problem] | None = None,
    ) -> None:
        before = self._by_file.get(path, {})
        kept: dict[Ident, bytes] = {}
        for ident in before.keys() - objects.keys():
            if self._owner.get(ident) == path:
                del self._owner[ident]
                batch.changes[ident] = None
        for ident, raw in objects.items():
            owner = self._owner.setdefault(ident, path)
            if owner != path:
                if problems is not None:
                    problems.append(
                        Problem(
                            str(path),
                            raw.kind,
                            str(raw.key),
                            "metadata.name",
                            f"is already defined in {owner}; ignored here",
                        )
                    )
                continue
            if before.get(ident) != (digest := raw.digest):
                batch.changes[ident] = raw
            kept[ident] = digest
        if kept:
            self._by_file[path] = kept
        else:
            self._by_file.pop(path, None)

    # -- watching ------------------------------------------------------------------------

    async def _edits(self, *, step_ms: int = 2) -> AsyncIterator[set[Path]]:
        """The files changed, a set each time; `step_ms` of quiet ends a burst of writes.

        Under a steady stream of edits a set still goes out every 50 ms, so a busy
        folder delays no edit by more than that.
        """
        # A single file is watched through its folder: editors that save by renaming
        # a new file into place would otherwise leave us watching a deleted inode.
        single = not self.path.is_dir()
        target = self.path.parent if single else self.path
        watch = watchfiles.awatch(target, debounce=50, step=step_ms, recursive=not single)
        async with contextlib.aclosing(watch):  # the notifier is released when we are
            async for events in watch:
                paths = {Path(p) for _, p in events}
                if single:
                    paths = {self.path} if any(p.name == self.path.name for p in paths) else set()
                else:
                    paths = {p for p in paths if p.suffix in SUFFIXES}
                if paths:
                    yield paths


def _report(sink: Sink, batch: FileBatch) -> None:
    for path, problems in batch.problems.items():
        sink.set_source_problems(str(path), problems)
