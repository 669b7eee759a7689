"""The local autoscaler: Knative's KPA, simplified, over the gateway's own request counts.

What is measured. In a cluster each pod's queue-proxy counts the requests in
flight and reports them. Here revisions run behind nothing, so the place every
request already passes is Envoy: each revision has one cluster, and Envoy keeps,
for each of its endpoints, `rq_active` (requests in flight) and `rq_total`
(requests sent). The autoscaler reads them from Envoy's admin
`/clusters?format=json` once per interval (one GET for every revision; these
per-endpoint stats exist whatever the bootstrap's stats matcher leaves out).
While a revision is at zero its endpoint is the activator, so requests held
there count too; the activator also reports each request it gets (`demand`),
as Knative's does, so a revision at zero is woken without waiting for a poll.
A sample is a moment, not an average: a burst shorter than the interval is
seen by the request totals (it keeps the revision from going idle), not by its
concurrency. A counting proxy in front of each process would see every request
but add a hop to each; Envoy already counts.

The decision (`decide`, pure): desired = ceil(peak concurrency over the window /
target per process), bounded by min-scale and max-scale. `target` is
`autoscaling.knative.dev/target` (default 100), lowered to `containerConcurrency`
when that is set and smaller. The limit itself is the activator's to hold
(`throttle.py`): such a revision stays behind the activator, which knows its
requests in flight and waiting exactly, so `held` (those counts) stands in for
Envoy's for it. A revision with no requests in flight keeps one
process until it has seen no traffic for the scale-to-zero grace period. The
window (the peak taken over it) is what delays a scale-down, like Knative's
stable window.

Every change is logged on one line: revision, from → to, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..model import ObjectKey, RawObject
from ..model.from_routes import revision_cluster

log = logging.getLogger(__name__)

TARGET = "autoscaling.knative.dev/target"
MIN_SCALE = "autoscaling.knative.dev/min-scale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"
INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"
DEFAULT_TARGET = 100.0
DEFAULT_GRACE = 30.0  # Knative's scale-to-zero-grace-period


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    """A revision's autoscaling annotations, read once. `max_scale` 0 means no bound."""

    target: float = DEFAULT_TARGET
    container_concurrency: int = 0
    min_scale: int = 0
    max_scale: int = 0
    initial_scale: int = 1

    @property
    def per_process(self) -> float:
        """Requests in flight one process should carry."""
        cc = self.container_concurrency
        return min(self.target, cc) if cc > 0 else self.target

    @property
    def first_count(self) -> int:
        """How many processes to start with (Knative: initial-scale, at least min-scale)."""
        return self.bound(max(self.initial_scale, self.min_scale))

    def bound(self, n: int) -> int:
        n = max(self.min_scale, n)
        return min(self.max_scale, n) if self.max_scale > 0 else n


def _number(raw: RawObject, name: str, value: object, *, least: float) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not number >= least:  # also catches NaN
        log.warning(
            "revision %s (%s): %s=%r is not a number >= %g; using the default",
            raw.key,
            raw.origin or "?",
            name,
            value,
            least,
        )
        return None
    return number


def scale_spec(raw: RawObject) -> ScaleSpec:
    """The Revision's scale annotations and `containerConcurrency`; a bad value is logged
    (naming the revision, its file and the annotation) and its default used."""
    notes = raw.annotations
    spec = raw.body.get("spec", {})
    values: dict[str, float] = {}
    for field, name, least in (
        ("target", TARGET, 0.01),
        ("min_scale", MIN_SCALE, 0),
        ("max_scale", MAX_SCALE, 0),
        ("initial_scale", INITIAL_SCALE, 0),
    ):
        if name in notes:
            number = _number(raw, name, notes[name], least=least)
            if number is not None:
                values[field] = number
    cc = spec.get("containerConcurrency", 0)
    return ScaleSpec(
        target=values.get("target", DEFAULT_TARGET),
        container_concurrency=cc if isinstance(cc, int) and cc > 0 else 0,
        min_scale=int(values.get("min_scale", 0)),
        max_scale=int(values.get("max_scale", 0)),
        initial_scale=int(values.get("initial_scale", 1)),
    )


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str


def decide(
    *, current: int, peak: float, idle_for: float, spec: ScaleSpec, grace: float
) -> Decision:
    """How many processes the revision should have, and why (pure).

    `peak` is the most requests seen in flight over the window, `idle_for` the
    seconds since the revision last saw a request.
    """
    target = spec.per_process
    if peak > 0:
        want = math.ceil(peak / target)
        why = f"{peak:g} in flight at peak, target {target:g} per process"
    elif current > 0 and idle_for < grace:
        want = 1
        why = f"nothing in flight, idle {idle_for:.1f} s of the {grace:g} s grace period"
    else:
        want = 0
        why = f"no traffic for {idle_for:.1f} s (grace period {grace:g} s)"
    bounded = spec.bound(want)
    if bounded > want:
        why += f"; min-scale {spec.min_scale}"
    elif bounded < want:
        why += f"; max-scale {spec.max_scale}"
    return Decision(bounded, why)


@dataclass(frozen=True, slots=True)
class Load:
    """One sample of a revision's cluster in Envoy."""

    active: int
    total: int


class Scalable(Protocol):
    """What the autoscaler drives (`runner.LocalRevisions` is one)."""

    def specs(self) -> Mapping[ObjectKey, ScaleSpec]: ...

    def count(self, key: ObjectKey) -> int:
        """Processes starting or serving (not those being stopped)."""
        ...

    def scale(self, key: ObjectKey, count: int) -> None:
        """Start or stop processes until `count` (returns at once)."""
        ...


def parse_clusters(status: Mapping) -> dict[str, dict[int, Load]]:
    """Envoy's `/clusters?format=json`: per cluster, per endpoint port, its requests in flight
    and sent (an endpoint's stats are its own, kept whatever the bootstrap's stats matcher)."""
    out: dict[str, dict[int, Load]] = {}
    for cluster in status.get("cluster_statuses", []):
        hosts = out.setdefault(str(cluster.get("name", "")), {})
        for host in cluster.get("host_statuses", []):
            port = int(host.get("address", {}).get("socket_address", {}).get("port_value", 0))
            stats = {s.get("name"): int(s.get("value", 0)) for s in host.get("stats", [])}
            hosts[port] = Load(stats.get("rq_active", 0), stats.get("rq_total", 0))
    return out


def cluster_load(hosts: Mapping[int, Load]) -> Load:
    return Load(sum(h.active for h in hosts.values()), sum(h.total for h in hosts.values()))


class Autoscaler:
    def __init__(
        self,
        revisions: Scalable,
        read: Callable[[], Awaitable[Mapping[str, Load]]],
        *,
        grace: float = DEFAULT_GRACE,
        window: float | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        held: Callable[[ObjectKey], Load] | None = None,
    ) -> None:
        """`read` samples Envoy; `window` (default: the grace period, at most 60 s, Knative's
        stable window) is how long a peak holds a revision's size up. `held(key)`, for a
        revision with a containerConcurrency, is what the activator holds for it (in flight
        or queued, and requests ever), read instead of Envoy's counts."""
        if grace <= 0 or interval <= 0:
            raise ValueError(f"autoscaler: grace ({grace}) and interval ({interval}) must be > 0")
        self._revisions = revisions
        self._read = read
        self._grace = grace
        self._window = window if window is not None else min(grace, 60.0)
        self._interval = interval
        self._clock = clock
        self._held = held
        self._samples: dict[ObjectKey, deque[tuple[float, int]]] = {}
        self._totals: dict[ObjectKey, int] = {}
        self._active_at: dict[ObjectKey, float] = {}

    def demand(self, key: ObjectKey) -> None:
        """A request reached the activator for this revision (its `on_demand`)."""
        self._active_at[key] = self._clock()
        spec = self._revisions.specs().get(key)
        if spec is not None and self._revisions.count(key) == 0:
            self._apply(key, 0, Decision(spec.bound(1), "a request is waiting at the activator"))

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._interval)

    async def tick(self) -> None:
        try:
            loads = await self._read()
        except (OSError, ValueError) as e:  # Envoy not up yet, or restarting: next time
            log.debug("autoscaler: cannot read Envoy's stats: %s", e)
            return
        now = self._clock()
        for key, spec in self._revisions.specs().items():
            if self._held is not None and spec.container_concurrency > 0:
                load = self._held(key)
            else:
                load = loads.get(revision_cluster(key), Load(0, 0))
            samples = self._samples.setdefault(key, deque())
            samples.append((now, load.active))
            while samples and samples[0][0] < now - self._window:
                samples.popleft()
            if load.active > 0 or load.total != self._totals.get(key, load.total):
                self._active_at[key] = now
            self._totals[key] = load.total
            current = self._revisions.count(key)
            decision = decide(
                current=current,
                peak=max(a for _, a in samples),
                idle_for=now - self._active_at.setdefault(key, now),
                spec=spec,
                grace=self._grace,
            )
            self._apply(key, current, decision)

    def _apply(self, key: ObjectKey, current: int, decision: Decision) -> None:
        if decision.desired != current:
            log.info("autoscaler: %s %d → %d: %s", key, current, decision.desired, decision.reason)
            self._revisions.scale(key, decision.desired)


# -- Envoy's side: what the autoscaler samples, and when a process is off the gateway ------

# Without /proc (not Linux), how long after Envoy dropped a process it is stopped.
BLIND_DRAIN = 1.0


class EnvoyAdmin:
    """One Envoy's admin interface, and its process (`pid`, once it runs)."""

    def __init__(self, admin_port: int) -> None:
        self.port = admin_port
        self.pid: int | None = None

    async def clusters(self) -> dict[str, dict[int, Load]]:
        from ..envoy import admin_get

        text = await asyncio.to_thread(admin_get, self.port, "/clusters?format=json", timeout=1.0)
        return parse_clusters(json.loads(text))

    async def loads(self) -> dict[str, Load]:
        return {name: cluster_load(hosts) for name, hosts in (await self.clusters()).items()}

    async def drained(self, key: ObjectKey, port: int, deadline: float) -> None:
        """Until Envoy no longer sends the revision's requests to `port` and holds none there.

        First Envoy must have applied the endpoints without it: the host is gone from
        its cluster (stronger than the ACK, which says only that Envoy accepted the
        update). Envoy then closes its connections to a removed host as their requests
        finish, so next: until no connection to the port is held by Envoy or by this
        process (the activator); their sockets are found through /proc. An idle
        connection the activator pooled counts too (it closes within its pool's idle
        limit). Past `deadline` (the revision's timeoutSeconds) the wait ends, logged.
        """
        cluster = revision_cluster(key)
        try:
            async with asyncio.timeout(deadline):
                while port in (await self.clusters()).get(cluster, {}):
                    await asyncio.sleep(0.05)
                if not os.path.isdir("/proc/self/fd"):
                    await asyncio.sleep(BLIND_DRAIN)
                    return
                owners = [os.getpid(), *([self.pid] if self.pid else [])]
                while await asyncio.to_thread(connections_to, port, owners):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("revision %s: 127.0.0.1:%d still busy after %g s", key, port, deadline)
        except (OSError, ValueError) as e:
            log.warning(
                "revision %s: cannot tell whether 127.0.0.1:%d is drained: %s", key, port, e
            )


def connections_to(port: int, pids: list[int]) -> int:
    """Open TCP connections to 127.0.0.1:`port` whose client side one of `pids` holds."""
    remote = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            # ESTABLISHED or SYN_SENT: a connection that can still carry a request.
            if fields[2] == remote and fields[3] in ("01", "02"):
                inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                held += os.readlink(f"{fd_dir}/{fd}") in inodes
    return held
