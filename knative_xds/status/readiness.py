"""When is a KIngress generation served? When every connected gateway has accepted it.

After each published snapshot the control plane tells the tracker which
resources carry each KIngress (its route tables, scopes, TLS listener and
secret) and at which generation. A generation is Ready once every connected
stream has acknowledged, for each of those names, the version the snapshot
that first carried the generation had, or any version published since: a
later snapshot only adds versions a stream may hold. Ready sticks to its
generation: a gateway that connects later, or a shared resource that changes
later, does not take it back; the next generation starts over.

The tracker watches streams through the ADS server's callbacks. Only what a
request can have changed is looked at again: the pending KIngresses that carry
a resource of the request's type, checked against that one stream. A
KIngress already Ready costs nothing per ACK.

Everything here is synchronous and does no I/O; listeners (the status writer)
are told which keys' readiness changed and read it back with `readiness`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from ..cache import Snapshot
from ..model.types import ObjectKey
from ..server.callbacks import Callbacks, StreamStatus
from ..server.subscription import Decision, Nack

Name = tuple[str, str]  # (type URL, resource name)
# Per KIngress: its generation and the resources that carry it.
Carried = tuple[int, Collection[Name]]

NO_GATEWAY = "NoGatewayConnected"
NO_GATEWAY_MESSAGE = (
    "No gateway is connected to the control plane: nothing serves this ingress yet."
)
WAITING = "WaitingForGateways"
WAITING_MESSAGE = "Waiting for every connected gateway to accept the configuration."


@dataclass(frozen=True, slots=True)
class Readiness:
    generation: int
    ready: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """One KIngress in the /debug/status view."""

    key: ObjectKey
    generation: int
    ready: bool
    reason: str
    waiting_for: int  # connected streams that have not accepted it yet
    seconds: float  # from its generation first published to Ready (or until now)


@dataclass(slots=True)
class _Pending:
    generation: int
    names: frozenset[Name]
    # Per name, every version a stream may hold for this generation to count as served.
    accepted: dict[Name, set[str]]
    # Connected streams that have not yet accepted every name.
    waiting: set[int]
    seen_at: float


@dataclass(frozen=True, slots=True)
class _Ready:
    generation: int
    seconds: float


Listener = Callable[[ObjectKey], None]


class ReadinessTracker(Callbacks):
    def __init__(
        self, *, streams: Iterable[StreamStatus] = (), clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`streams`: those already open when the tracker starts watching."""
        self._clock = clock
        self._streams: dict[int, StreamStatus] = {s.id: s for s in streams}
        self._pending: dict[ObjectKey, _Pending] = {}
        self._ready: dict[ObjectKey, _Ready] = {}
        # Pending keys per type URL and per name: what an ACK or a publish can touch.
        self._by_type: dict[str, set[ObjectKey]] = {}
        self._by_name: dict[Name, set[ObjectKey]] = {}
        self._serial: int | None = None
        self._listeners: list[Listener] = []
        # Called with a generation's seconds from first published to Ready (the metrics).
        self.on_ready: list[Callable[[float], None]] = []
        # Pending keys requests made the tracker look at (tests guard "O(pending)" with it).
        self.examined = 0

    # -- what others ask ----------------------------------------------------------------

    def readiness(self, key: ObjectKey) -> Readiness | None:
        done = self._ready.get(key)
        if done is not None:
            return Readiness(done.generation, True)
        pending = self._pending.get(key)
        if pending is None:
            return None
        if not self._streams:
            return Readiness(pending.generation, False, NO_GATEWAY, NO_GATEWAY_MESSAGE)
        return Readiness(pending.generation, False, WAITING, WAITING_MESSAGE)

    def keys(self) -> list[ObjectKey]:
        return [*self._ready, *self._pending]

    def pending(self) -> set[ObjectKey]:
        """Keys whose latest generation is not Ready yet."""
        return set(self._pending)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(key)` whenever a key's readiness changes; returns its removal."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def rows(self) -> list[Row]:
        now = self._clock()
        rows = [Row(k, r.generation, True, "", 0, r.seconds) for k, r in self._ready.items()]
        for key, p in self._pending.items():
            reason = self.readiness(key).reason  # type: ignore[union-attr]
            rows.append(Row(key, p.generation, False, reason, len(p.waiting), now - p.seen_at))
        return sorted(rows, key=lambda r: r.key)

    # -- what the control plane publishes -----------------------------------------------

    def published(
        self,
        snapshot: Snapshot,
        ingresses: Mapping[ObjectKey, Carried],
        *,
        only: Collection[ObjectKey] | None = None,
    ) -> None:
        """`snapshot` was published, carrying `ingresses`.

        Without `only`, `ingresses` is every KIngress served, and any other key is
        forgotten. With `only`, just those keys are looked at (one missing from
        `ingresses` is forgotten), so a publish costs what it changed.
        """
        changed: list[ObjectKey] = []
        fresh: list[ObjectKey] = []
        for key in ingresses.keys() if only is None else only:
            carried = ingresses.get(key)
            if carried is None:
                if self._forget(key):
                    changed.append(key)
                continue
            generation, names = carried
            done = self._ready.get(key)
            if done is not None and done.generation >= generation:
                continue
            pending = self._pending.get(key)
            if pending is not None and pending.generation >= generation:
                if pending.generation == generation and (wanted := frozenset(names)) != (
                    pending.names
                ):
                    self._start(key, generation, wanted, seen_at=pending.seen_at)
                    fresh.append(key)
                continue
            self._start(key, generation, frozenset(names), seen_at=self._clock())
            fresh.append(key)
            changed.append(key)
        if only is None:
            gone = [k for k in itertools.chain(self._ready, self._pending) if k not in ingresses]
            for key in gone:
                self._forget(key)
            changed += gone
        self._take_versions(snapshot, fresh)
        for key in fresh:
            if self._settle(key):
                changed.append(key)
        self._tell(dict.fromkeys(changed))

    def _start(
        self, key: ObjectKey, generation: int, names: frozenset[Name], *, seen_at: float
    ) -> None:
        self._forget(key)
        pending = _Pending(
            generation, names, {n: set() for n in names}, set(self._streams), seen_at
        )
        self._pending[key] = pending
        for name in names:
            self._by_type.setdefault(name[0], set()).add(key)
            self._by_name.setdefault(name, set()).add(key)

    def _forget(self, key: ObjectKey) -> bool:
        had = self._ready.pop(key, None) is not None
        pending = self._pending.pop(key, None)
        if pending is None:
            return had
        for name in pending.names:
            _unindex(self._by_type, name[0], key)
            _unindex(self._by_name, name, key)
        return True

    def _take_versions(self, snapshot: Snapshot, fresh: Iterable[ObjectKey]) -> None:
        """Add what `snapshot` holds to the versions pending keys accept.

        Snapshots seen one after the other: only the names it changed, and the keys
        just started. After a gap (a snapshot not reported here): every pending name.
        """
        follows = self._serial is not None and snapshot.serial == self._serial + 1
        self._serial = snapshot.serial
        if not follows:
            for pending in self._pending.values():
                _accept(pending, pending.names, snapshot)
            return
        for type_url, names in snapshot.changed.items():
            if type_url not in self._by_type:
                continue
            for name in names:
                for key in self._by_name.get((type_url, name), ()):
                    _accept(self._pending[key], ((type_url, name),), snapshot)
        for key in fresh:
            pending = self._pending[key]
            _accept(pending, pending.names, snapshot)

    # -- what streams do ----------------------------------------------------------------

    def on_stream_open(self, status: StreamStatus) -> None:
        first = not self._streams
        self._streams[status.id] = status
        for pending in self._pending.values():
            pending.waiting.add(status.id)
        if first:
            self._tell(self._pending)  # no longer "no gateway connected"

    def on_stream_close(self, status: StreamStatus) -> None:
        if self._streams.pop(status.id, None) is None:
            return
        for pending in self._pending.values():
            pending.waiting.discard(status.id)
        if not self._streams:
            self._tell(self._pending)  # "no gateway connected" again
            return
        done = [k for k, p in self._pending.items() if not p.waiting]
        self._tell({k: None for k in done if self._settle(k)})

    def on_request(
        self, status: StreamStatus, type_url: str, decision: Decision, nack: Nack | None
    ) -> None:
        keys = self._by_type.get(type_url)
        if not keys or status.id not in self._streams:
            return
        done = []
        self.examined += len(keys)
        for key in keys:
            pending = self._pending[key]
            if status.id in pending.waiting and _holds(pending, status):
                pending.waiting.discard(status.id)
                if not pending.waiting:
                    done.append(key)
        self._tell({k: None for k in done if self._settle(k)})

    # -- internals ----------------------------------------------------------------------

    def _settle(self, key: ObjectKey) -> bool:
        """Check every stream still waited on; mark the key Ready if none is left."""
        pending = self._pending[key]
        for stream_id in list(pending.waiting):
            status = self._streams.get(stream_id)
            if status is None or _holds(pending, status):
                pending.waiting.discard(stream_id)
        if pending.waiting or not self._streams:
            return False
        seconds = self._clock() - pending.seen_at
        self._forget(key)
        self._ready[key] = _Ready(pending.generation, seconds)
        for observe in self.on_ready:
            observe(seconds)
        return True

    def _tell(self, keys: Iterable[ObjectKey]) -> None:
        for key in list(keys):
            for listener in self._listeners:
                listener(key)


def _unindex(index: dict, at: object, key: ObjectKey) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]


def _accept(pending: _Pending, names: Iterable[Name], snapshot: Snapshot) -> None:
    for name in names:
        resource = snapshot.of(name[0]).get(name[1])
        if resource is not None:
            pending.accepted[name].add(resource.version)


def _holds(pending: _Pending, status: StreamStatus) -> bool:
    """Has this stream accepted, for every name, a version this generation accepts?"""
    for name in pending.names:
        sub = status.subs.get(name[0])
        if sub is None:
            return False
        held = sub.acked.get(name[1])
        if held is None or held.version not in pending.accepted[name]:
            return False
    return True
