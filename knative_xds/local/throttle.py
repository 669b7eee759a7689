"""`containerConcurrency` as a hard limit: the activator's throttle.

In a cluster each pod's queue-proxy refuses to hold more than
`containerConcurrency` requests at once, and the activator stays in the path of
such a revision (its burst capacity is short) and sends each request to a pod
with a free slot. Here revisions run behind nothing, so for a revision with a
limit the gateway is given only the activator (`up` withholds its processes'
endpoints), and this throttle is where the limit holds: at most `limit`
requests in flight per ready process, each sent to the process with the fewest
in flight; the others wait in the activator's queue for the revision (bounded:
full is a 503) until a slot frees or a new process is ready, or their
`timeoutSeconds` runs out (504). The activator counts every request exactly, so
its counts, not Envoy's, tell the autoscaler how much such a revision carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from ..model import ObjectKey


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class Lease:
    """A process's port to send one request to; `release()` once its answer is relayed."""

    port: int
    release: Callable[[], None] = _nothing


def least_loaded(ports: Sequence[int], in_flight: Mapping[int, int], limit: int) -> int | None:
    """The port with the fewest requests in flight and a free slot (the oldest of equals:
    `ports` is oldest first), or None when every one holds `limit` (pure)."""
    free = [p for p in ports if in_flight.get(p, 0) < limit]
    return min(free, key=lambda p: in_flight.get(p, 0)) if free else None


class Throttle:
    """Slots per revision process. `limit(key)` is the revision's containerConcurrency (0:
    not throttled), `ports(key)` its ready processes (oldest first), `wake(key)` starts one
    at zero and returns once one is ready."""

    def __init__(
        self,
        limit: Callable[[ObjectKey], int],
        ports: Callable[[ObjectKey], Sequence[int]],
        wake: Callable[[ObjectKey], Awaitable[int]],
    ) -> None:
        self.limit = limit
        self._ports = ports
        self._wake = wake
        self._in_flight: dict[ObjectKey, dict[int, int]] = {}
        self._requests: dict[ObjectKey, int] = {}
        self._changed: dict[ObjectKey, asyncio.Event] = {}

    def in_flight(self, key: ObjectKey) -> int:
        return sum(self._in_flight.get(key, {}).values())

    def requests(self, key: ObjectKey) -> int:
        """Requests the throttle was asked for, ever (for the autoscaler's idle clock)."""
        return self._requests.get(key, 0)

    def per_process(self, key: ObjectKey) -> dict[int, int]:
        return dict(self._in_flight.get(key, {}))

    def changed(self, key: ObjectKey | None = None) -> None:
        """A slot freed, or processes came or went (None: any revision's): waiters look again."""
        for k in [key] if key is not None else list(self._changed):
            event = self._changed.pop(k, None)
            if event is not None:
                event.set()

    async def acquire(self, key: ObjectKey, limit: int) -> Lease:
        """A slot on the least loaded ready process, waiting as long as it takes (the caller
        bounds the wait by the revision's timeoutSeconds)."""
        self._requests[key] = self._requests.get(key, 0) + 1
        while True:
            ports = self._ports(key)
            if not ports:
                await self._wake(key)  # at zero: a process starts (or one starting is awaited)
                continue
            counts = self._in_flight.setdefault(key, {})
            port = least_loaded(ports, counts, limit)
            if port is not None:
                # No await from here to the return: a cancelled request never holds a slot.
                counts[port] = counts.get(port, 0) + 1
                return Lease(port, partial(self._release, key, port))
            await self._changed.setdefault(key, asyncio.Event()).wait()

    def _release(self, key: ObjectKey, port: int) -> None:
        counts = self._in_flight.get(key, {})
        counts[port] = counts.get(port, 1) - 1
        if counts[port] <= 0:
            del counts[port]
        if not counts:
            self._in_flight.pop(key, None)
        self.changed(key)
