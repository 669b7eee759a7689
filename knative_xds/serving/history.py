"""The revision history: every revision each configuration has made, in SQLite.

What a cluster's API server remembers for Knative, kept in one file of the
state folder, so a restart of `up` goes on with `hello-00003`, not `hello-00001`.
Each write is one transaction, WAL-journalled with `synchronous=FULL`: once
`record` returns, the revision survives a crash or a power cut, and a crash in
the middle leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..model.kinds import Ident
from ..model.objects import RawObject
from ..model.types import ObjectKey, Problem
from .reconcile import Reconciled, StoredRevision, reconcile, removed
from .template import KNATIVE_DEFAULTS, Limits

FILE_NAME = "revisions.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    namespace     TEXT    NOT NULL,
    configuration TEXT    NOT NULL,
    owner         TEXT    NOT NULL,  -- the kind that made it: Service or Configuration
    generation    INTEGER NOT NULL,  -- the configuration's template changes, from 1
    name          TEXT    NOT NULL,
    template_hash TEXT    NOT NULL,
    template      TEXT    NOT NULL,  -- the defaulted template, canonical JSON
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    PRIMARY KEY (namespace, configuration, generation),
    UNIQUE (namespace, name)         -- a revision's name is unique in its namespace
)
"""
_COLUMNS = "namespace, configuration, owner, generation, name, template_hash, template"


class HistoryError(RuntimeError):
    """The history cannot be read or written as asked (names the file and the reason)."""


class NameTaken(HistoryError):
    """A revision's name or generation is already recorded (by another configuration)."""


def default_state_dir(env: Mapping[str, str] = os.environ, home: Path | None = None) -> Path:
    """`$XDG_STATE_HOME/knative-xds`, else `~/.local/state/knative-xds`: per user, not per run."""
    base = env.get("XDG_STATE_HOME") or str((home or Path.home()) / ".local" / "state")
    return Path(base) / "knative-xds"


class RevisionHistory:
    """The history in one SQLite file. `open()` before use, `close()` after (or `with`).

    One owner, one call at a time: calls are short and block (well under a
    millisecond, plus an fsync per write), and a second process on the same file
    waits for the first's write (busy timeout).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike[str]) -> RevisionHistory:
        return cls(Path(state_dir) / FILE_NAME)

    def open(self) -> RevisionHistory:
        if self._db is not None:
            return self
        try:
            # The folder holds what a user ran; others on the machine have no business there.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; each write says BEGIN itself.
            # check_same_thread=False: the owner may call from a worker thread
            # (asyncio.to_thread), never from two at once.
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise HistoryError(f"{self.path}: cannot open the revision history: {e}") from None
        try:
            self._prepare(db)
        except sqlite3.Error as e:
            db.close()
            raise HistoryError(f"{self.path}: not a usable revision history: {e}") from None
        except HistoryError:
            db.close()
            raise
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RevisionHistory:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _prepare(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path}: written by a newer knative-xds (schema {version},"
                f" this one reads {SCHEMA_VERSION}); use another --state-dir or --reset"
            )
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before `record` returns (NORMAL could lose the last
        # one on power loss in WAL mode); writes are rare, so the cost does not matter.
        db.execute("PRAGMA synchronous=FULL")
        with self._transaction(db):
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryError(f"{self.path}: the revision history is not open")
        return self._db

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a write waits for another
        # process's (busy timeout) instead of failing half-way on a lock upgrade. Two
        # processes recording the same generation: the primary key refuses the second.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------

    def revisions(self, namespace: str, configuration: str) -> tuple[StoredRevision, ...]:
        """One configuration's revisions, oldest first (what `reconcile` takes)."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM revisions WHERE namespace = ? AND configuration = ?"
            " ORDER BY generation",
            (namespace, configuration),
        )
        return tuple(StoredRevision(*row) for row in rows)

    def configurations(self) -> tuple[tuple[str, ObjectKey], ...]:
        """(owner kind, key) of every configuration with a history, sorted.

        At start-up, those no longer in the input were deleted while nothing ran:
        the caller forgets them, as Knative would have deleted their revisions.
        """
        rows = self._conn.execute(
            "SELECT DISTINCT owner, namespace, configuration FROM revisions"
            " ORDER BY namespace, configuration, owner"
        )
        return tuple((owner, ObjectKey(ns, name)) for owner, ns, name in rows)

    # -- writing ---------------------------------------------------------------------

    def record(self, entries: Iterable[StoredRevision]) -> None:
        """Add revisions (`Reconciled.new_entries`), all or none."""
        rows = [
            (
                e.namespace,
                e.configuration,
                e.owner,
                e.generation,
                e.name,
                e.template_hash,
                e.template,
            )
            for e in entries
        ]
        if not rows:
            return
        db = self._conn
        try:
            with self._transaction(db):
                db.executemany(
                    f"INSERT INTO revisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.IntegrityError as e:
            names = ", ".join(f"{r[0]}/{r[4]} (generation {r[3]})" for r in rows)
            raise NameTaken(
                f"{self.path}: cannot record revision {names}: a revision of that name or"
                f" generation is already recorded ({e})"
            ) from None
        except sqlite3.Error as e:
            raise HistoryError(f"{self.path}: cannot record revisions: {e}") from None

    def forget(self, owner: str, key: ObjectKey) -> int:
        """Delete a deleted Service's or Configuration's revisions; how many went."""
        db = self._conn
        with self._transaction(db):
            cur = db.execute(
                "DELETE FROM revisions WHERE namespace = ? AND configuration = ? AND owner = ?",
                (key.namespace, key.name, owner),
            )
        return cur.rowcount

    def reset(self) -> None:
        """Forget every revision (`up --reset`): the next ones start at 00001."""
        db = self._conn
        with self._transaction(db):
            db.execute("DELETE FROM revisions")

    # -- reconcile and keep, in one call ---------------------------------------------

    def apply(
        self, raw: RawObject, *, latest_ready: str | None = None, limits: Limits = KNATIVE_DEFAULTS
    ) -> Reconciled:
        """`reconcile` against this history, then record the revision it made.

        A revision that cannot be recorded (another configuration of the namespace
        already has its name) is a problem of the object, and nothing is produced;
        any other failure to write raises HistoryError.
        """
        done = reconcile(
            raw,
            self.revisions(raw.key.namespace, raw.key.name),
            latest_ready=latest_ready,
            limits=limits,
        )
        try:
            self.record(done.new_entries)
        except NameTaken as e:
            field = "spec.template.metadata.name"
            problem = Problem(raw.origin, raw.kind, str(raw.key), field, str(e))
            return Reconciled(kind=raw.kind, key=raw.key, problems=(problem,))
        return done

    def delete(self, kind: str, key: ObjectKey) -> tuple[Ident, ...]:
        """A Service or Configuration was deleted: forget its revisions; what to delete."""
        gone = removed(kind, key, self.revisions(key.namespace, key.name))
        self.forget(kind, key)
        return gone
