"""Which file's definition is served when several files define one object.

The rule: the file that claimed it first. A claim made later goes behind the
others, and is adopted at once when every claim before it goes (the file deletes
the object, or the file goes). After a restart the files are read in path order,
so the order of earlier claims is remembered (see `file_state.FileState`) and a
remembered claim goes back in its place: the same file wins hot and after a
restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..model import Problem, RawObject
from ..model.kinds import Ident

log = logging.getLogger(__name__)

Changes = dict[Ident, RawObject | None]


class Owners:
    def __init__(self, remembered: Mapping[Ident, Sequence[Path]] | None = None) -> None:
        self._claims: dict[Ident, list[Path]] = {}
        # Those with more than one claim, kept as claims come and go: `disputed` runs after
        # every edit, and walking every claim there would make an edit cost O(objects).
        self._disputed: set[Ident] = set()
        self._remembered = {ident: list(paths) for ident, paths in (remembered or {}).items()}

    def owner(self, ident: Ident) -> Path | None:
        claims = self._claims.get(ident)
        return claims[0] if claims else None

    def count(self, ident: Ident) -> int:
        return len(self._claims.get(ident, ()))

    def remembered(self, ident: Ident) -> bool:
        """Whether a claim on it may still go before another (from before a restart)."""
        return ident in self._remembered

    def claim(self, ident: Ident, path: Path) -> Path:
        """`path` defines `ident`; the owner after that (`path` or the one before it)."""
        claims = self._claims.setdefault(ident, [])
        if path not in claims:
            order = self._remembered.get(ident, [])
            rank = order.index(path) if path in order else len(order)
            at = len(claims)
            for i, other in enumerate(claims):
                if (order.index(other) if other in order else len(order)) > rank:
                    at = i
                    break
            claims.insert(at, path)
            if len(claims) > 1:
                self._disputed.add(ident)
        return claims[0]

    def release(self, ident: Ident, path: Path) -> Path | None:
        """`path` no longer defines `ident`; the owner after that, None if nobody does."""
        claims = self._claims.get(ident, [])
        if path in claims:
            claims.remove(path)
        if len(claims) < 2:
            self._disputed.discard(ident)
        order = self._remembered.get(ident)
        if order is not None and path in order:
            order.remove(path)  # it let go: coming back later, it queues like any other
            if len(order) < 2:
                del self._remembered[ident]
        if not claims:
            self._claims.pop(ident, None)
            return None
        return claims[0]

    def settle(self) -> None:
        """The first read is done: from now on a new claim queues behind the others."""
        self._remembered.clear()

    def disputed(self) -> dict[Ident, list[Path]]:
        """Objects more than one file defines, with their files in claim order."""
        return {i: list(self._claims[i]) for i in self._disputed}


class Definitions:
    """Every object each file defines, and which definition of each is served."""

    def __init__(self, remembered: Mapping[Ident, Sequence[Path]] | None = None) -> None:
        # By file, every object it defines (served or not), by fingerprint.
        self.by_file: dict[Path, dict[Ident, bytes]] = {}
        self.owners = Owners(remembered)
        # The bodies of the definitions of disputed objects, to adopt one when its owner goes.
        self._bodies: dict[Ident, dict[Path, RawObject]] = {}

    def holds(self, path: Path) -> int:
        return len(self.by_file.get(path, ()))

    def replace(
        self, path: Path, objects: Mapping[Ident, RawObject], changes: Changes, touched: set[Path]
    ) -> None:
        """`path` now defines `objects`: what that changes of what is served goes in
        `changes`; files whose duplicate problems change go in `touched`."""
        before = self.by_file.get(path, {})
        for ident in before.keys() - objects.keys():
            self._release(ident, path, changes, touched)
        kept: dict[Ident, bytes] = {}
        for ident, raw in objects.items():
            kept[ident] = digest = raw.digest
            was = self.owners.owner(ident)
            owner = self.owners.claim(ident, path)
            if owner != path or ident in self._bodies or self.owners.remembered(ident):
                self._bodies.setdefault(ident, {})[path] = raw
            if owner == path and (was != path or before.get(ident) != digest):
                changes[ident] = raw
                if was is not None and was != path:
                    touched.add(was)  # displaced by a claim remembered from before a restart
        if kept:
            self.by_file[path] = kept
        else:
            self.by_file.pop(path, None)

    def _release(self, ident: Ident, path: Path, changes: Changes, touched: set[Path]) -> None:
        was = self.owners.owner(ident)
        owner = self.owners.release(ident, path)
        bodies = self._bodies.get(ident, {})
        bodies.pop(path, None)
        if was == path:
            adopted = bodies.get(owner) if owner is not None else None
            changes[ident] = adopted
            if owner is not None:
                touched.add(owner)  # its "also defined" problem goes
                if adopted is None:
                    log.error("%s %s: the definition in %s was not kept", ident[0], ident[1], owner)
        if self.owners.count(ident) < 2 and not self.owners.remembered(ident):
            self._bodies.pop(ident, None)

    def duplicates(self, path: Path) -> list[Problem]:
        """A problem for each object `path` defines whose served definition is another's."""
        problems = []
        for ident in self.by_file.get(path, {}):
            owner = self.owners.owner(ident)
            if owner is not None and owner != path:
                kind, key = ident
                problems.append(
                    Problem(
                        str(path),
                        kind,
                        str(key),
                        "metadata.name",
                        f"is also defined in {owner}, whose definition is served; "
                        "this one is served if that one goes",
                    )
                )
        return problems
