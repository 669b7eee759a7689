"""Knative objects from a YAML file or a directory of them, watched for edits.

Each file is read on its own and diffed against what it held before, so an edit
to one file yields changes only for the objects in it. A file that does not
parse keeps its last good objects serving and is reported with its line; a file
that is deleted takes its objects with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles
import yaml_rs

from ..model import Problem, RawObject
from ..model.resolve import KINDS, Ident

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
_SEPARATOR = re.compile(r"^---", re.MULTILINE)

Changes = dict[Ident, RawObject | None]


@dataclass(slots=True)
class FileBatch:
    """What one (re)read produced: object changes, and the problems of the files read."""

    changes: Changes = field(default_factory=dict)
    problems: dict[Path, list[Problem]] = field(default_factory=dict)


def parse_documents(path: Path, text: str) -> tuple[dict[Ident, RawObject], list[Problem]]:
    """Objects of the kinds we read from one file's YAML documents; problems for the rest."""
    origin = str(path)
    try:
        docs = load_documents(text)
    except yaml_rs.YAMLDecodeError as e:
        lines = str(e).splitlines()
        summary = f"{lines[0]}: {lines[-1]}" if len(lines) > 1 else str(e)
        return {}, [Problem(origin, "file", "", "", f"not valid YAML: {summary}")]
    objects: dict[Ident, RawObject] = {}
    problems: list[Problem] = []
    for index, doc in enumerate(_flatten(docs)):
        if doc is None:
            continue
        raw, problem = _raw_object(origin, index, doc)
        if problem is not None:
            problems.append(problem)
        elif raw is not None:
            if raw.ident in objects:
                problems.append(
                    Problem(
                        origin,
                        raw.kind,
                        str(raw.key),
                        "metadata.name",
                        "is defined twice in this file",
                    )
                )
            objects[raw.ident] = raw
    return objects, problems


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


def _raw_object(origin: str, index: int, doc: Any) -> tuple[RawObject | None, Problem | None]:
    where = f"document {index + 1}"
    if not isinstance(doc, Mapping):
        return None, Problem(origin, "file", where, "", "must be a mapping (a Kubernetes object)")
    kind = doc.get("kind")
    meta = doc.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, Mapping) or not meta.get("name"):
        return None, Problem(origin, "file", where, "", "needs kind and metadata.name")
    if kind not in KINDS:
        log.info(
            "%s: %s %s skipped: knative-xds reads %s",
            origin,
            kind,
            meta.get("name"),
            ", ".join(KINDS),
        )
        return None, None
    return RawObject.from_dict(doc, origin), None


class FileSource:
    """Owns the view of the files; `read_all` first, then `watch` for batches of changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_file: dict[Path, dict[Ident, bytes]] = {}
        self._owner: dict[Ident, Path] = {}

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return [self.path] if self.path.exists() else []

    def read_all(self) -> FileBatch:
        self._check_exists()
        return self.reread(self.files())

    def read_in_parts(self, files_per_part: int = 200) -> Iterator[FileBatch]:
        """`read_all`, a part at a time: the caller takes each part in and lets its parsed
        YAML go before the next is read (25,000 objects' worth is ~80 MB at once)."""
        self._check_exists()
        files = self.files()
        for at in range(0, len(files), files_per_part):
            yield self.reread(files[at : at + files_per_part])

    def _check_exists(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(
                f"{self.path} does not exist: give a YAML file or a directory of them"
            )

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
            batch.problems[path] = []
            return
        except (OSError, UnicodeDecodeError) as e:
            batch.problems[path] = [Problem(str(path), "file", "", "", f"cannot be read: {e}")]
            return
        objects, problems = parse_documents(path, text)
        if any(p.kind == "file" and not p.key for p in problems):
            batch.problems[path] = problems  # unparsable: its last good objects keep serving
            return
        self._replace(path, objects, batch, problems)
        batch.problems[path] = problems

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

    async def watch(self, *, step_ms: int = 2, stop: Any = None) -> AsyncIterator[FileBatch]:
        """Yield a batch each time files change; `step_ms` of quiet ends a burst of writes.

        Under a steady stream of edits a batch still goes out every 50 ms, so a busy
        folder delays no edit by more than that.
        """
        # A single file is watched through its folder: editors that save by renaming
        # a new file into place would otherwise leave us watching a deleted inode.
        single = not self.path.is_dir()
        target = self.path.parent if single else self.path
        async for events in watchfiles.awatch(
            target, debounce=50, step=step_ms, stop_event=stop, recursive=not single
        ):
            paths = {Path(p) for _, p in events}
            if single:
                paths = {self.path} if any(p.name == self.path.name for p in paths) else set()
            else:
                paths = {p for p in paths if p.suffix in SUFFIXES}
            if paths:
                yield self.reread(paths)
