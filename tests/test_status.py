"""The readiness tracker: a KIngress generation is Ready once every connected gateway holds it.

Snapshots come from the real cache, streams are the server's own `StreamStatus`
with real `Subscription`s, and a gateway "ACKs" exactly as the stream loop
applies one: the subscription records what was sent, then takes the answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2

from knative_xds.cache import Snapshot, SnapshotCache
from knative_xds.model.types import ObjectKey
from knative_xds.resources import ROUTE, SCOPED_ROUTE, Resource
from knative_xds.server.callbacks import StreamStatus
from knative_xds.server.subscription import Decision, Subscription
from knative_xds.status.readiness import NO_GATEWAY, WAITING, ReadinessTracker
from knative_xds.translate import Delta

HELLO = ObjectKey("default", "hello")
OTHER = ObjectKey("default", "other")
_ids = itertools.count(1000)


# -- resources, snapshots and gateways --------------------------------------------------


def table(key: ObjectKey, host: str) -> Resource:
    """A route table for `key` whose content (and so version) follows `host`."""
    vhost = route_components_pb2.VirtualHost(name=host, domains=[host])
    return Resource.of(
        route_pb2.RouteConfiguration(name=f"t/{key}", virtual_hosts=[vhost]), name=f"t/{key}"
    )


def scope(key: ObjectKey) -> Resource:
    message = scoped_route_pb2.ScopedRouteConfiguration(
        name=f"s/{key}", route_configuration_name=f"t/{key}"
    )
    return Resource.of(message, name=f"s/{key}")


def names(key: ObjectKey) -> tuple[tuple[str, str], ...]:
    return ((ROUTE, f"t/{key}"), (SCOPED_ROUTE, f"s/{key}"))


class Plane:
    """A cache and a tracker, published to as the control plane does after each snapshot."""

    def __init__(self, tracker: ReadinessTracker) -> None:
        self.cache = SnapshotCache(instance="test")
        self.tracker = tracker
        self.generations: dict[ObjectKey, int] = {}

    def serve(self, key: ObjectKey, host: str, generation: int, *, report: bool = True) -> Snapshot:
        delta = Delta()
        delta.set(table(key, host))
        delta.set(scope(key))
        snapshot = self.cache.apply(delta)
        assert snapshot is not None
        self.generations[key] = generation
        if report:
            self.report(snapshot)
        return snapshot

    def report(self, snapshot: Snapshot, only: Iterable[ObjectKey] | None = None) -> None:
        carried = {k: (g, names(k)) for k, g in self.generations.items()}
        self.tracker.published(snapshot, carried, only=None if only is None else list(only))


def gateway() -> StreamStatus:
    return StreamStatus(id=next(_ids), peer="ipv4:127.0.0.1:1", delta=False, node_id="gw")


def ack(
    tracker: ReadinessTracker,
    stream: StreamStatus,
    snapshot: Snapshot,
    keys: Iterable[ObjectKey],
    *,
    types: Iterable[str] = (SCOPED_ROUTE, ROUTE),
    reject: bool = False,
) -> None:
    """The gateway is sent these keys' resources as `snapshot` has them, and answers."""
    for type_url in types:
        sub = stream.subs.setdefault(type_url, Subscription(type_url))
        sent: Mapping[str, Resource] = {
            n: snapshot.of(type_url)[n] for k in keys for t, n in names(k) if t == type_url
        }
        nonce = str(next(_ids))
        sub.record_sent(nonce, sent, version=snapshot.version(type_url), full_state=False)
        decision = sub.answer(nonce, "rejected" if reject else None)
        assert decision is not None
        nack = sub.last_nack if decision is Decision.NACK else None
        tracker.on_request(stream, type_url, decision, nack)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> ReadinessTracker:
    return ReadinessTracker(clock=clock)


@pytest.fixture
def plane(tracker: ReadinessTracker) -> Plane:
    return Plane(tracker)


def told(tracker: ReadinessTracker) -> list[ObjectKey]:
    heard: list[ObjectKey] = []
    tracker.listen(heard.append)
    return heard


# -- tests ------------------------------------------------------------------------------


def test_with_no_gateway_connected_a_kingress_is_not_ready_and_says_why(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    plane.serve(HELLO, "hello.example.com", 1)
    state = tracker.readiness(HELLO)
    assert state is not None
    assert (state.generation, state.ready, state.reason) == (1, False, NO_GATEWAY)
    assert "no gateway is connected" in state.message.lower()


def test_ready_only_once_every_connected_gateway_acked_every_resource(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    first, second = gateway(), gateway()
    tracker.on_stream_open(first)
    tracker.on_stream_open(second)
    heard = told(tracker)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    assert heard == [HELLO]
    assert tracker.readiness(HELLO).reason == WAITING  # type: ignore[union-attr]

    ack(tracker, first, snapshot, [HELLO])
    ack(tracker, second, snapshot, [HELLO], types=[ROUTE])  # the scope not yet
    assert not tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    assert heard == [HELLO]

    ack(tracker, second, snapshot, [HELLO], types=[SCOPED_ROUTE])
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    assert heard == [HELLO, HELLO]


def test_a_rejected_response_does_not_make_it_ready(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    ack(tracker, stream, snapshot, [HELLO], reject=True)
    assert not tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    ack(tracker, stream, snapshot, [HELLO])
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]


def test_holding_the_previous_generation_is_not_ready_a_later_version_is(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    old = plane.serve(HELLO, "v1.example.com", 1)
    ack(tracker, stream, old, [HELLO])
    assert tracker.readiness(HELLO) is not None and tracker.readiness(HELLO).ready  # type: ignore[union-attr]

    plane.serve(HELLO, "v2.example.com", 2)
    assert not tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    ack(tracker, stream, old, [HELLO])  # sent v1 again: not what generation 2 carries
    assert not tracker.readiness(HELLO).ready  # type: ignore[union-attr]

    # The table changes again (same generation) before the gateway got generation 2's.
    later = plane.serve(HELLO, "v3.example.com", 2)
    ack(tracker, stream, later, [HELLO])
    state = tracker.readiness(HELLO)
    assert state is not None and (state.generation, state.ready) == (2, True)


def test_a_version_published_in_an_unreported_snapshot_still_counts(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    plane.serve(HELLO, "v1.example.com", 1)
    skipped = plane.serve(HELLO, "v2.example.com", 1, report=False)
    plane.serve(OTHER, "other.example.com", 1)  # reported: HELLO's v2 was never seen here
    ack(tracker, stream, skipped, [HELLO])
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]


def test_ready_sticks_to_its_generation_when_a_gateway_connects_later(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    ack(tracker, stream, snapshot, [HELLO])
    tracker.on_stream_open(gateway())
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]


def test_closing_the_last_gateway_still_waited_on_makes_it_ready(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    fast, slow = gateway(), gateway()
    tracker.on_stream_open(fast)
    tracker.on_stream_open(slow)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    ack(tracker, fast, snapshot, [HELLO])
    heard = told(tracker)
    tracker.on_stream_close(slow)
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    assert heard == [HELLO]


def test_when_every_gateway_goes_away_pending_kingresses_say_so(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    plane.serve(HELLO, "hello.example.com", 1)
    heard = told(tracker)
    tracker.on_stream_close(stream)
    assert tracker.readiness(HELLO).reason == NO_GATEWAY  # type: ignore[union-attr]
    assert heard == [HELLO]
    tracker.on_stream_open(gateway())
    assert tracker.readiness(HELLO).reason == WAITING  # type: ignore[union-attr]
    assert heard == [HELLO, HELLO]


def test_a_kingress_already_held_by_every_gateway_is_ready_when_published(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    """A new generation whose resources did not change (e.g. only an annotation moved)."""
    stream = gateway()
    tracker.on_stream_open(stream)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    ack(tracker, stream, snapshot, [HELLO])
    plane.generations[HELLO] = 2
    plane.report(snapshot)
    state = tracker.readiness(HELLO)
    assert state is not None and (state.generation, state.ready) == (2, True)


def test_an_ack_looks_only_at_pending_kingresses(tracker: ReadinessTracker, plane: Plane) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    keys = [ObjectKey("default", f"r-{i}") for i in range(2000)]
    delta = Delta()
    for key in keys:
        delta.set(table(key, f"{key.name}.example.com"))
        delta.set(scope(key))
        plane.generations[key] = 1
    snapshot = plane.cache.apply(delta)
    assert snapshot is not None
    plane.report(snapshot)
    ack(tracker, stream, snapshot, keys)
    assert all(tracker.readiness(k).ready for k in keys)  # type: ignore[union-attr]

    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    examined = tracker.examined
    ack(tracker, stream, snapshot, [HELLO], types=[ROUTE])
    assert tracker.examined - examined == 1
    assert not tracker.readiness(HELLO).ready  # type: ignore[union-attr]


def test_rows_report_the_time_from_publish_to_ready(
    tracker: ReadinessTracker, plane: Plane, clock: Clock
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)
    plane.serve(OTHER, "other.example.com", 3)
    clock.now += 2.5
    ack(tracker, stream, snapshot, [HELLO])
    clock.now += 1.0
    hello, other = tracker.rows()
    assert (hello.key, hello.generation, hello.ready, hello.seconds) == (HELLO, 1, True, 2.5)
    assert (other.key, other.ready, other.reason, other.waiting_for) == (OTHER, False, WAITING, 1)
    assert other.seconds == pytest.approx(3.5)


def test_kingresses_left_out_of_a_full_report_are_forgotten_and_told(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    plane.serve(HELLO, "hello.example.com", 1)
    snapshot = plane.serve(OTHER, "other.example.com", 1)
    heard = told(tracker)
    del plane.generations[OTHER]
    plane.report(snapshot)
    assert tracker.readiness(OTHER) is None
    assert tracker.readiness(HELLO) is not None
    assert heard == [OTHER]


def test_a_partial_report_looks_only_at_the_keys_it_names(
    tracker: ReadinessTracker, plane: Plane
) -> None:
    stream = gateway()
    tracker.on_stream_open(stream)
    plane.serve(HELLO, "hello.example.com", 1)
    snapshot = plane.serve(OTHER, "other.example.com", 1)
    ack(tracker, stream, snapshot, [HELLO, OTHER])
    plane.generations[HELLO] = 2
    del plane.generations[OTHER]
    plane.report(snapshot, only=[HELLO])
    # HELLO's generation 2 carries what the gateway holds; OTHER was not named: kept.
    assert tracker.readiness(HELLO).generation == 2  # type: ignore[union-attr]
    assert tracker.readiness(OTHER) is not None
    plane.report(snapshot, only=[OTHER])
    assert tracker.readiness(OTHER) is None
