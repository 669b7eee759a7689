"""What the file source keeps across restarts, in a state folder.

Two things, so that a restart serves what the process before it served:

- each input file's last good text (the last version that parsed as a whole), so a
  file that does not parse when the process starts is served as it last was, not
  dropped;
- for an object that more than one file defines, the order in which the files
  claimed it, so that the same file's definition wins after a restart as before.

Every write is atomic (a temporary file, fsync, `os.replace`, fsync of the folder):
a crash leaves the old copy or the new one, never half of one. The folder is
keyed by a hash of the absolute config path, so two configs never share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..model import ObjectKey
from ..model.kinds import Ident

log = logging.getLogger(__name__)

# Not .json nor .yaml: a state folder inside the config folder is never read as config.
OWNERS = "owners.state"
COPY = ".last-good"


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/knative-xds, else ~/.local/state/knative-xds."""
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "knative-xds"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LastGood:
    text: str
    saved: float  # time.time() when it was read and parsed

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.saved))


def _ident_str(ident: Ident) -> str:
    kind, key = ident
    return f"{kind} {key.namespace}/{key.name}"


def _ident_of(text: str) -> Ident:
    kind, _, rest = text.partition(" ")
    namespace, _, name = rest.partition("/")
    return (kind, ObjectKey(namespace, name))


class FileState:
    """The last good text of each input file, and the claim order of disputed objects.

    Copies are named `<path hash>-<text hash>.last-good` (JSON), so whether a file's text is
    already kept is a look-up, not a read; new ones are written on `flush`.
    """

    def __init__(self, root: Path, config: Path) -> None:
        self.dir = root / _hash(str(config.absolute()))
        self._saved: dict[str, str] = {}  # path hash -> text hash on disk
        self._pending: dict[Path, LastGood | None] = {}  # None: forget the copy
        self._inflight: dict[Path, LastGood | None] = {}  # taken, being written
        self._owners_dirty = False
        self._claims: dict[Ident, list[str]] = {}
        self._ok = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(self.dir):
                if entry.name.endswith(COPY):
                    ph, _, th = entry.name.removesuffix(COPY).partition("-")
                    if th:
                        self._saved[ph] = th
            self._claims = self._read_owners()
        except OSError as e:
            self._fail(f"cannot be used: {e}")

    def _fail(self, why: str) -> None:
        if self._ok:
            log.error(
                "state folder %s %s; a restart will not have last good copies of the files",
                self.dir,
                why,
            )
        self._ok = False

    # -- last good copies ------------------------------------------------------------

    def remember(self, path: Path, text: str) -> None:
        """`text` parsed as a whole: it is the file's last good version (written on flush)."""
        if self._saved.get(_hash(str(path))) != _hash(text):
            self._pending[path] = LastGood(text, time.time())

    def forget(self, path: Path) -> None:
        self._pending[path] = None

    def last_good(self, path: Path) -> LastGood | None:
        for waiting in (self._pending, self._inflight):
            if path in waiting:
                return waiting[path]
        ph = _hash(str(path))
        th = self._saved.get(ph)
        if th is None:
            return None
        try:
            data = json.loads((self.dir / f"{ph}-{th}{COPY}").read_text(encoding="utf-8"))
            if data.get("path") != str(path):
                return None  # a hash collision: not this file's copy
            return LastGood(str(data["text"]), float(data["saved"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("the last good copy of %s in %s cannot be read: %s", path, self.dir, e)
            return None

    # -- claims on objects several files define ----------------------------------------

    def claims(self) -> dict[Ident, list[Path]]:
        return {ident: [Path(p) for p in paths] for ident, paths in self._claims.items()}

    def set_claims(self, disputed: Mapping[Ident, Iterable[Path]]) -> None:
        claims = {ident: [str(p) for p in paths] for ident, paths in disputed.items()}
        if claims != self._claims:
            self._claims = claims
            self._owners_dirty = True

    def _read_owners(self) -> dict[Ident, list[str]]:
        path = self.dir / OWNERS
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(path.read_text(encoding="utf-8"))
            return {_ident_of(k): [str(p) for p in v] for k, v in data.items()}
        return {}

    # -- writing: `take` on the event loop, `write` in a thread, `done` on the loop -------

    def take(self) -> Flush | None:
        """What to write since the last take; None when nothing."""
        if not self._pending and not self._owners_dirty:
            return None
        writes = [(p, good, self._saved.get(_hash(str(p)))) for p, good in self._pending.items()]
        self._inflight.update(self._pending)
        self._pending = {}
        owners = None
        if self._owners_dirty:
            body = {_ident_str(i): paths for i, paths in sorted(self._claims.items())}
            owners = json.dumps(body, indent=1).encode()
            self._owners_dirty = False
        return Flush(writes, owners)

    def write(self, flush: Flush) -> list[tuple[str, str | None]]:
        """Write `flush` (touches only the disk: safe in a thread); what is on disk now."""
        done: list[tuple[str, str | None]] = []
        try:
            for path, good, old in flush.writes:
                ph = _hash(str(path))
                th = _hash(good.text) if good is not None else None
                if good is not None and th != old:
                    body = {"path": str(path), "saved": good.saved, "text": good.text}
                    write_atomically(self.dir / f"{ph}-{th}{COPY}", json.dumps(body).encode())
                if old is not None and old != th:
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / f"{ph}-{old}{COPY}").unlink()
                done.append((ph, th))
            if flush.owners is not None:
                write_atomically(self.dir / OWNERS, flush.owners)
            _sync_folder(self.dir)
        except OSError as e:
            self._fail(f"cannot be written: {e}")
        return done

    def done(self, flush: Flush, written: list[tuple[str, str | None]]) -> None:
        for ph, th in written:
            if th is None:
                self._saved.pop(ph, None)
            else:
                self._saved[ph] = th
        for path, good, _ in flush.writes:
            if self._inflight.get(path, _NOTHING) is good:
                del self._inflight[path]

    def flush(self) -> None:
        """Write everything now (blocking)."""
        if (flush := self.take()) is not None:
            self.done(flush, self.write(flush))


_NOTHING = object()


@dataclass(frozen=True, slots=True)
class Flush:
    writes: list[tuple[Path, LastGood | None, str | None]]  # path, its copy (None: gone), old
    owners: bytes | None
