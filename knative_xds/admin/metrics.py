"""Prometheus metrics of one control plane, named the way Istio's pilot names its own.

`Metrics` owns its registry (one per `ControlPlane`, so planes in one process
never share counters) and watches three places: every ADS stream (as a
`Callbacks` observer), every published batch (`Pipeline.on_applied`) and every
source health change or event (`Pipeline.on_source`).

Label values are bounded sets: xDS type short names (CDS, EDS, ...), the
protocol (sotw, delta), an object kind, a source scope's kind. Never a route,
node or scope name: a label per gateway or per route would grow without end.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ..resources import short
from ..server.callbacks import Callbacks, StreamStatus
from ..server.subscription import Decision, Nack
from ..sources.base import ScopeHealth, SourceEvent

if TYPE_CHECKING:
    from ..app import ControlPlane
    from ..pipeline import Applied
    from ..status.readiness import ReadinessTracker

# No `_created` series beside each counter: they double the page and no dashboard reads them.
disable_created_metrics()

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Publishes remembered for push time and convergence: older ones are dropped unobserved
# (a plane editing faster than its gateways ACK has bigger problems than a histogram).
_REMEMBERED = 64
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def scope_kind(scope: str) -> str:
    """A bounded label for a source scope: `kubernetes` for `kubernetes: <collection>`,
    else `file` (a folder or file path: its name is unbounded, so it never is a label)."""
    head, sep, _ = scope.partition(": ")
    return head if sep and head.isidentifier() else "file"


def _counter_of(version: str, instance: str) -> int | None:
    """The per-type counter in a version `<instance>-<n>` of this process, else None."""
    head, _, tail = version.rpartition("-")
    if head != instance or not tail.isdigit():
        return None
    return int(tail)


def _never_raises(method: Callable[..., None]) -> Callable[..., None]:
    """A pipeline hook that logs its own failure: a metrics bug must not stop publishing."""

    @functools.wraps(method)
    def guarded(*args: object) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("metrics: %s failed (counting goes on)", method.__name__)

    return guarded


@dataclass(frozen=True, slots=True)
class _Published:
    at: float  # time.perf_counter()
    counters: dict[str, int]  # per type changed by this snapshot: its new counter


class Metrics(Callbacks):
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge(
            "knative_xds_xds_connected",
            "Gateways (ADS streams) connected, by protocol",
            ["protocol"],
            registry=r,
        )
        self.pushes = Counter(
            "knative_xds_xds_pushes", "xDS responses sent, by type", ["type"], registry=r
        )
        self.push_bytes = Counter(
            "knative_xds_xds_push_bytes",
            "Bytes of xDS responses sent, by type",
            ["type"],
            registry=r,
        )
        self.push_time = Histogram(
            "knative_xds_xds_push_time_seconds",
            "From a snapshot's publish to a response carrying it handed to the transport",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.nacks = Counter(
            "knative_xds_xds_nacks",
            "Responses rejected by a gateway, by type (the error text is on /debug/status)",
            ["type"],
            registry=r,
        )
        self.convergence = Histogram(
            "knative_xds_convergence_seconds",
            "From an edit's publish to every connected gateway having ACKed it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kingress_ready = Histogram(
            "knative_xds_kingress_ready_seconds",
            "From a KIngress generation's first publish to every connected gateway holding it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_version = Gauge(
            "knative_xds_snapshot_version", "Serial of the snapshot being served", registry=r
        )
        self.rejected = Gauge(
            "knative_xds_rejected_objects",
            "Objects with a problem right now (not served as written), by kind",
            ["kind"],
            registry=r,
        )
        self.source_healthy = Gauge(
            "knative_xds_source_healthy",
            "1 while every scope of this kind reads well, 0 while one fails",
            ["scope_kind"],
            registry=r,
        )
        self.last_sync = Gauge(
            "knative_xds_source_last_sync_timestamp_seconds",
            "When a source last read a scope whole and well (Unix time)",
            registry=r,
        )
        self.relists = Counter(
            "knative_xds_source_relists", "Full relists of a source collection", registry=r
        )
        self.api_errors = Counter(
            "knative_xds_source_api_errors",
            "Failed requests to the Kubernetes API server",
            registry=r,
        )
        self.withdrawn = Counter(
            "knative_xds_routes_withdrawn",
            "Routes (and KIngresses) that stopped being served",
            registry=r,
        )
        self.mass_withdrawals = Counter(
            "knative_xds_mass_withdrawals",
            "Changes that withdrew more than half of the served Routes at once",
            registry=r,
        )
        for protocol in ("sotw", "delta"):
            self.connected.labels(protocol).set(0)
        self._published: dict[str, deque[tuple[int, float]]] = {}
        self._pending: deque[_Published] = deque(maxlen=_REMEMBERED)
        self._kinds_seen: set[str] = set()
        # Per open stream, per type URL: the version of the last response sent, for
        # /debug/status ("version sent" beside "version acked"); dropped on close.
        self.sent_versions: dict[int, dict[str, str]] = {}
        # When each open stream opened: a publish older than its stream is not a push
        # (a gateway connecting an hour later is not an hour of push time).
        self._opened: dict[int, float] = {}
        self._tracker: ReadinessTracker | None = None

    def watch_readiness(self, tracker: ReadinessTracker) -> None:
        """Observe the KIngress readiness time of `tracker` (at most one, the plane's)."""
        if tracker is not self._tracker:
            self._tracker = tracker
            tracker.on_ready.append(self.kingress_ready.observe)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what /metrics answers)."""
        return generate_latest(self.registry)

    # -- streams ------------------------------------------------------------------------

    def on_stream_open(self, status: StreamStatus) -> None:
        self.connected.labels(_protocol(status)).inc()
        self._opened[status.id] = time.perf_counter()

    def on_stream_close(self, status: StreamStatus) -> None:
        self.connected.labels(_protocol(status)).dec()
        self.sent_versions.pop(status.id, None)
        self._opened.pop(status.id, None)
        self._check_convergence()

    def on_request(
        self, status: StreamStatus, type_url: str, decision: Decision, nack: Nack | None
    ) -> None:
        if decision is Decision.NACK:
            self.nacks.labels(short(type_url)).inc()
        elif self._pending:
            self._check_convergence()

    def on_response(
        self,
        status: StreamStatus,
        type_url: str,
        version: str,
        resource_count: int,
        byte_count: int,
    ) -> None:
        self.sent_versions.setdefault(status.id, {})[type_url] = version
        kind = short(type_url)
        self.pushes.labels(kind).inc()
        self.push_bytes.labels(kind).inc(byte_count)
        counter = _counter_of(version, self._plane.cache.instance)
        opened = self._opened.get(status.id, 0.0)
        for published, at in self._published.get(type_url, ()):
            if published == counter:
                if at >= opened:
                    self.push_time.labels(kind).observe(time.perf_counter() - at)
                break

    # -- the pipeline -------------------------------------------------------------------

    @_never_raises
    def on_applied(self, applied: Applied) -> None:
        snapshot = applied.snapshot
        state = applied.update.state
        # The status reporter (and its tracker) is made after the plane: take it up here,
        # before it is told of this publish, so its first Ready is already observed.
        if self._plane.reporter is not None:
            self.watch_readiness(self._plane.reporter.tracker)
        self.withdrawn.inc(
            sum(1 for k in applied.update.changed_ingresses if k not in state.ingresses)
        )
        if getattr(applied, "withdrawal", None) is not None:
            self.mass_withdrawals.inc()
        self._count_problems()
        if snapshot is None:
            return
        self.snapshot_version.set(snapshot.serial)
        now = time.perf_counter()
        changed = {t: snapshot.counters.get(t, 0) for t, names in snapshot.changed.items() if names}
        for type_url, counter in changed.items():
            times = self._published.setdefault(type_url, deque(maxlen=_REMEMBERED))
            times.append((counter, now))
        if changed and self._plane.ads.streams:
            self._pending.append(_Published(now, changed))
            self._check_convergence()

    @_never_raises
    def on_source(self, scope: str, what: ScopeHealth | SourceEvent) -> None:
        if what is SourceEvent.RELIST:
            self.relists.inc()
        elif what is SourceEvent.API_ERROR:
            self.api_errors.inc()
        elif isinstance(what, ScopeHealth):
            self._count_health()

    def _count_health(self) -> None:
        by_kind: dict[str, bool] = {}
        synced = [h.last_sync for h in self._plane.pipeline.health.values() if h.last_sync]
        for scope, health in self._plane.pipeline.health.items():
            kind = scope_kind(scope)
            by_kind[kind] = by_kind.get(kind, True) and health.healthy
        for kind, healthy in by_kind.items():
            self.source_healthy.labels(kind).set(1 if healthy else 0)
        if synced:
            self.last_sync.set(max(synced))

    def _count_problems(self) -> None:
        counts: dict[str, int] = {}
        for p in self._plane.pipeline.problems():
            counts[p.kind] = counts.get(p.kind, 0) + 1
        # A kind whose problems are all fixed drops to 0 rather than keeping its last count.
        for kind in self._kinds_seen | counts.keys():
            self.rejected.labels(kind).set(counts.get(kind, 0))
        self._kinds_seen |= counts.keys()

    # -- convergence ----------------------------------------------------------------------

    def _check_convergence(self) -> None:
        """Observe each remembered publish every connected gateway has now ACKed."""
        while self._pending and self._converged(self._pending[0]):
            done = self._pending.popleft()
            self.convergence.observe(time.perf_counter() - done.at)

    def _converged(self, published: _Published) -> bool:
        instance = self._plane.cache.instance
        for stream in self._plane.ads.streams.values():
            for type_url, target in published.counters.items():
                sub = stream.status.subs.get(type_url)
                if sub is None:
                    continue  # the gateway does not ask for this type
                acked = _counter_of(sub.acked_version, instance)
                if acked is not None and acked >= target:
                    continue
                # Planned against this snapshot with nothing to send (none of its names
                # changed) and nothing awaiting an answer: it has what it needs.
                if not sub.inflight and sub.planned_at >= target:
                    continue
                return False
        return True


def _protocol(status: StreamStatus) -> str:
    return "delta" if status.delta else "sotw"
