"""Versioned resources per type: what every gateway should have, as immutable snapshots.

The cache knows nothing of gRPC streams. It applies a translation `Delta`,
checks the result is consistent, publishes a new immutable `Snapshot` and wakes
its watchers; each stream then works out on its own what its client lacks.
Because a snapshot never changes after it is published, streams read it
without locks and share its serialized bytes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Protocol

from immutables import Map

from .resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SCOPED_ROUTE,
    SECRET,
    Resource,
    short,
)
from .translate import Delta

log = logging.getLogger(__name__)


# Every type's resources are a persistent map: a snapshot shares all an update did not
# change with the one before, so an edit costs what it changed, and a stream can hold
# a snapshot's whole set (and its later versions) for the price of the differences.
_EMPTY: Map = Map()


class InconsistentSnapshot(RuntimeError):
    """A snapshot that would leave a reference dangling; it is never published."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """All resources at one point in time, with a version per type.

    Versions are `<instance>-<n>`: the instance id is random per process, so a
    version from an earlier run or another replica is never mistaken for ours.
    """

    serial: int
    instance: str
    resources: Mapping[str, Map]
    counters: Mapping[str, int]
    # Names changed per type since the previous snapshot (for logs and tests).
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Types whose first complete set is in: no stream is sent any other (a first load
    # publishes clusters and endpoints before the route tables, see pipeline.py).
    loaded: frozenset[str] = frozenset(PUSH_ORDER)

    def version(self, type_url: str) -> str:
        return f"{self.instance}-{self.counters.get(type_url, 0)}"

    def of(self, type_url: str) -> Map:
        return self.resources.get(type_url, _EMPTY)

    @cached_property
    def _bodies(self) -> dict[str, bytes]:
        return {}

    def full_body(self, type_url: str) -> bytes:
        """Every resource of a type as joined DiscoveryResponse entries, built once per snapshot."""
        body = self._bodies.get(type_url)
        if body is None:
            items = self.of(type_url)
            body = b"".join(items[name].sotw_entry for name in sorted(items))
            self._bodies[type_url] = body
        return body


CHANGELOG = 256


class ConfigCache(Protocol):
    """What the ADS server needs of a cache: the current snapshot and a way to hear of the next."""

    def current(self) -> Snapshot | None: ...

    def watch(self, event: asyncio.Event) -> Callable[[], None]:
        """Set `event` on every publish until the returned cancel function is called."""
        ...

    def changed_since(self, type_url: str, counter: int) -> set[str] | None:
        """Names changed after a type's `counter`, or None if that is too far back to tell."""
        ...


class SnapshotCache:
    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or secrets.token_hex(4)
        self._snapshot: Snapshot | None = None
        self._resources: dict[str, Map] = dict.fromkeys(PUSH_ORDER, _EMPTY)
        self._counters: dict[str, int] = dict.fromkeys(PUSH_ORDER, 0)
        self._serial = 0
        self._loaded: frozenset[str] = frozenset()
        self._watches: set[asyncio.Event] = set()
        # Per type, the names each recent counter changed: lets a stream that planned at
        # counter N look at only what changed since, instead of every name it has.
        self._log: dict[str, deque[tuple[int, frozenset[str]]]] = {
            t: deque(maxlen=CHANGELOG) for t in PUSH_ORDER
        }

    def current(self) -> Snapshot | None:
        return self._snapshot

    def changed_since(self, type_url: str, counter: int) -> set[str] | None:
        """Names of a type changed after `counter`; None when the log no longer reaches back."""
        now = self._counters.get(type_url, 0)
        if counter >= now:
            return set()
        log = self._log.get(type_url)
        if not log or log[0][0] > counter + 1:
            return None
        out: set[str] = set()
        for at, names in log:
            if at > counter:
                out |= names
        return out

    def watch(self, event: asyncio.Event) -> Callable[[], None]:
        self._watches.add(event)
        return lambda: self._watches.discard(event)

    @property
    def watch_count(self) -> int:
        return len(self._watches)

    def apply(self, delta: Delta, *, loaded: Iterable[str] = PUSH_ORDER) -> Snapshot | None:
        """Publish the delta as a new snapshot; None when it changed nothing.

        `loaded` names the types whose whole set the delta completes; until a type is
        loaded, streams are sent none of it. Raises InconsistentSnapshot (and
        publishes nothing) if a reference would dangle.
        """
        staged: dict[str, Map] = {}
        changed: dict[str, frozenset[str]] = {}
        for type_url, items in delta.changes.items():
            current = self._resources.setdefault(type_url, _EMPTY)
            names = {
                n
                for n, r in items.items()
                if (r is None and n in current) or (r is not None and _differs(current.get(n), r))
            }
            if not names:
                continue
            staged[type_url] = _with_changes(current, {n: items[n] for n in names})
            changed[type_url] = frozenset(names)
        now_loaded = self._loaded | frozenset(loaded)
        if not changed and self._snapshot is not None and now_loaded == self._loaded:
            return None
        merged = {**self._resources, **staged}
        check_consistency(merged, changed)
        self._resources = merged
        self._loaded = now_loaded
        for type_url, names in changed.items():
            self._counters[type_url] = self._counters.get(type_url, 0) + 1
            self._log.setdefault(type_url, deque(maxlen=CHANGELOG)).append(
                (self._counters[type_url], names)
            )
        self._serial += 1
        self._snapshot = Snapshot(
            serial=self._serial,
            instance=self.instance,
            resources=MappingProxyType(merged),
            counters=MappingProxyType(dict(self._counters)),
            changed=MappingProxyType(changed),
            loaded=now_loaded,
        )
        log.debug(
            "snapshot %s: %s",
            self._serial,
            ", ".join(f"{short(t)} {len(n)}" for t, n in changed.items()) or "initial",
        )
        for event in self._watches:
            event.set()
        return self._snapshot


def _with_changes(current: Map, changes: Mapping[str, Resource | None]) -> Map:
    """`current` with `changes` applied (None removes). Persistent: the new map shares
    all it did not change with `current`, which the last snapshot still holds."""
    with current.mutate() as out:
        for name, resource in changes.items():
            if resource is None:
                del out[name]
            else:
                out[name] = resource
        return out.finish()


def _differs(old: Resource | None, new: Resource) -> bool:
    return old is None or old.version != new.version


# What each type names by reference: a dangling one would leave a route without a target,
# a cluster without endpoints, or an HTTPS listener without its certificate.
_REFERS_TO = {LISTENER: SECRET, SCOPED_ROUTE: ROUTE, ROUTE: CLUSTER, CLUSTER: ENDPOINT}


def check_consistency(
    resources: Mapping[str, Mapping[str, Resource]], changed: Mapping[str, frozenset[str]]
) -> None:
    """Every scope's route table, every route's cluster, every EDS cluster's endpoints and
    every listener's certificates exist.

    Changed resources are checked against what they name; the full scan for
    something still naming a removed resource runs only when one was removed.
    """
    for source_type, target_type in _REFERS_TO.items():
        sources, targets = resources.get(source_type, {}), resources.get(target_type, {})
        for name in changed.get(source_type, ()):
            source = sources.get(name)
            # Membership per ref: `refs - targets.keys()` would copy every key, each time.
            if source is not None and (missing := [r for r in source.refs if r not in targets]):
                raise InconsistentSnapshot(
                    f"{short(source_type)} {name} needs {sorted(missing)[:5]}"
                )
        removed = {n for n in changed.get(target_type, ()) if n not in targets}
        if removed:
            for source in sources.values():
                if dangling := removed.intersection(source.refs):
                    raise InconsistentSnapshot(
                        f"{short(source_type)} {source.name} still needs {sorted(dangling)[:5]}"
                    )
    clusters, endpoints = resources.get(CLUSTER, {}), resources.get(ENDPOINT, {})
    for name in changed.get(ENDPOINT, frozenset()):
        if name in endpoints and name not in clusters:
            raise InconsistentSnapshot(f"endpoints {name} have no cluster")
