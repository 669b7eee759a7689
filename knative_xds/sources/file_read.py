"""Reading the files: each (re)read diffed against what the file held before.

`FileReader` keeps the view of the files that `FileSource` serves from: which
objects each file defines (`file_owners`), each file's own problems, what each
skips, and since when a file that held objects has been empty. It does no I/O but
reading the files and handing texts to the state folder (`file_state`), and never
waits: `FileSource` decides when to read and what to do with a `FileBatch`.

A file is taken as a whole: one that does not parse, or has a broken document,
changes nothing of what it held (or restores its last good text, with a state
folder). A file that becomes empty is taken as being written and keeps its
objects for `grace` seconds first; `due()` says which files' grace is over.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..model import Problem, RawObject
from ..model.kinds import Ident
from .file_owners import Definitions
from .file_parse import Ignored, Parsed, parse_documents
from .file_state import FileState
from .file_watch import SUFFIXES, blank

# Under the folder source's name: one logger says everything about the files.
log = logging.getLogger("knative_xds.sources.file")

Changes = dict[Ident, RawObject | None]


@dataclass(slots=True)
class FileBatch:
    """What one (re)read produced: object changes, and the problems of the files read."""

    changes: Changes = field(default_factory=dict)
    problems: dict[Path, list[Problem]] = field(default_factory=dict)


class FileReader:
    """What the files under `path` hold, as last read; `reread` says what changed.

    `state` (optional) keeps each file's last good text and the claim order of
    objects several files define; `grace` is how long a file that became empty
    keeps its objects serving.
    """

    def __init__(
        self, path: Path, *, files_per_part: int, state: FileState | None, grace: float
    ) -> None:
        self.path = path
        self._files_per_part = files_per_part
        self._grace = grace
        self._state = state
        self._ignored: dict[Path, list[Ignored]] = {}
        # Each file's own problems (its parse, its documents); duplicates are added on report.
        self._problems: dict[Path, list[Problem]] = {}
        self._defs = Definitions(state.claims() if state is not None else None)
        # Files that became empty while holding objects: since when (time.monotonic()).
        self._empty_since: dict[Path, float] = {}

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

    # -- what the source asks of the view ------------------------------------------------

    def holds_any(self) -> bool:
        """Whether any file defines an object that is served."""
        return any(self._defs.by_file.values())

    def known(self) -> set[Path]:
        """Every file to read again to be sure of the view: there now, holding, or a problem."""
        return set(self.files()) | set(self._defs.by_file) | set(self._problems)

    def settle(self) -> None:
        """The first read is done: claims remembered from before a restart are let go."""
        self._defs.owners.settle()

    def disputed(self) -> dict[Ident, list[Path]]:
        """Objects several files claim, with the claims in order (for the state folder)."""
        return self._defs.owners.disputed()

    def timeout(self, poll: float) -> float:
        """How long to wait for an edit: `poll`, or less if an empty file's grace ends first."""
        if not self._empty_since:
            return poll
        due = min(self._empty_since.values()) + self._grace - time.monotonic()
        return max(0.0, min(due, poll))

    def due(self) -> set[Path]:
        """The empty files whose grace is over: read again, they withdraw their objects."""
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
