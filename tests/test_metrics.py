"""The Prometheus metrics, read from the plane's own registry while real ADS streams
(over loopback gRPC) and a Kubernetes source (against the fake API server) run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from knative_xds import synth
from knative_xds.admin.http import ready_reason
from knative_xds.admin.status_view import status
from knative_xds.app import ControlPlane
from knative_xds.resources import CLUSTER, ENDPOINT
from knative_xds.sources.kube_watch import WatchOptions
from tests.fake_kube_api import FakeApiServer
from tests.kube_fixtures import FAST, a_cluster, synced, watching

from .protocol.conftest import Harness, eventually, raw_objects, start_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()
    try:
        yield h
    finally:
        await h.close()


def sample(plane: ControlPlane, name: str, **labels: str) -> float:
    value = plane.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_connected_gateways_by_protocol_go_up_and_down(harness: Harness) -> None:
    plane = harness.plane
    sotw, delta = harness.sotw(), harness.delta()
    await sotw.request(CLUSTER)
    await delta.request(CLUSTER)
    await sotw.recv(CLUSTER)
    await delta.recv(CLUSTER)
    assert sample(plane, "knative_xds_xds_connected", protocol="sotw") == 1
    assert sample(plane, "knative_xds_xds_connected", protocol="delta") == 1
    await delta.close()
    await eventually(lambda: sample(plane, "knative_xds_xds_connected", protocol="delta") == 0)
    assert sample(plane, "knative_xds_xds_connected", protocol="sotw") == 1


async def test_pushes_bytes_push_time_and_nacks_are_counted_by_type(harness: Harness) -> None:
    plane = harness.plane
    client = harness.sotw()
    await client.request(CLUSTER)
    clusters = await client.recv(CLUSTER)
    await client.ack(clusters)
    # An edit's clusters reach the gateway: the push time from its publish is observed.
    harness.world.add_later_route()
    await client.ack(await client.recv(CLUSTER))
    await eventually(
        lambda: sample(plane, "knative_xds_xds_push_time_seconds_count", type="CDS") == 1
    )
    await client.request(ENDPOINT, ["default/hello-1"])
    endpoints = await client.recv(ENDPOINT)
    await client.nack(endpoints, "bad endpoint")
    await harness.caught_up(client)

    assert sample(plane, "knative_xds_xds_pushes_total", type="CDS") == 2
    assert sample(plane, "knative_xds_xds_pushes_total", type="EDS") == 1
    assert sample(plane, "knative_xds_xds_push_bytes_total", type="CDS") >= clusters.ByteSize()
    assert sample(plane, "knative_xds_xds_nacks_total", type="EDS") == 1
    assert sample(plane, "knative_xds_xds_nacks_total", type="CDS") == 0
    assert sample(plane, "knative_xds_snapshot_version") == plane.cache.current().serial


async def test_convergence_is_observed_once_every_gateway_acked_the_edit(
    harness: Harness,
) -> None:
    plane = harness.plane
    first, second = harness.sotw(), harness.delta()
    for client in (first, second):
        await client.request(CLUSTER)
        await client.ack(await client.recv(CLUSTER))
        await harness.caught_up(client)
    before = sample(plane, "knative_xds_convergence_seconds_count")

    harness.world.add_later_route()  # a new cluster for both
    await first.ack(await first.recv(CLUSTER))
    await harness.caught_up(first)
    response = await second.recv(CLUSTER)
    # One of two gateways has it: not converged yet.
    assert sample(plane, "knative_xds_convergence_seconds_count") == before
    await second.ack(response)
    await harness.caught_up(second)
    assert sample(plane, "knative_xds_convergence_seconds_count") == before + 1


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def applying(plane: ControlPlane) -> AsyncIterator[None]:
    task = asyncio.create_task(plane.pipeline.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_source_health_follows_api_errors_and_recovers_without_a_restart(
    server: FakeApiServer,
) -> None:
    plane = ControlPlane()
    healthy: list[float] = []
    plane.pipeline.on_source.append(
        lambda scope, what: healthy.append(
            sample(plane, "knative_xds_source_healthy", scope_kind="kubernetes")
        )
    )
    a_cluster(server)
    server.fail("list", "/revisions", 500, times=2)
    options = WatchOptions(backoff=FAST.backoff, watch_seconds=30, quick_end=0.2)
    async with applying(plane), watching(server, plane, options=options) as ready:
        await synced(server, ready)
        plane.loaded.set()  # as ControlPlane.load does once the first state is published
        assert 0.0 in healthy, "the failing list never showed as unhealthy"
        assert sample(plane, "knative_xds_source_healthy", scope_kind="kubernetes") == 1
        assert sample(plane, "knative_xds_source_api_errors_total") == 2
        assert sample(plane, "knative_xds_source_last_sync_timestamp_seconds") > 0
        assert ready_reason(plane) is None
        served = set(plane.cache.current().of(CLUSTER))

        # The API server answers 500 to the relist that a 410 forces.
        server.fail("list", "/routes", 500, times=1)
        held = server.hold("list", "/routes")  # then holds the retry: the outage lasts
        relists = sample(plane, "knative_xds_source_relists_total")
        server.expire_watches()
        await eventually(
            lambda: sample(plane, "knative_xds_source_healthy", scope_kind="kubernetes") == 0
        )
        reason = ready_reason(plane)
        assert reason is not None and "routes.serving.knative.dev" in reason
        assert set(plane.cache.current().of(CLUSTER)) == served  # the last good state serves
        assert sample(plane, "knative_xds_source_relists_total") > relists
        assert sample(plane, "knative_xds_source_api_errors_total") == 3

        held.release()
        await eventually(
            lambda: sample(plane, "knative_xds_source_healthy", scope_kind="kubernetes") == 1
        )
        assert ready_reason(plane) is None

        # A watch that fails once, on a collection where nothing happens: healthy again
        # once the next watch has stayed open a moment, with no event to say so.
        server.fail("watch", "/revisions", 500, times=1)
        server.drop_watches()
        await eventually(lambda: ready_reason(plane) is not None)
        await eventually(lambda: ready_reason(plane) is None)
        assert sample(plane, "knative_xds_source_api_errors_total") == 4


async def test_rejected_objects_by_kind_and_withdrawn_routes_follow_the_state(
    harness: Harness,
) -> None:
    plane = harness.plane
    bad = synth.route("broken", [synth.target("hello-1", 150)])  # percent over 100
    plane.pipeline.apply(raw_objects(bad))
    assert [p.kind for p in plane.pipeline.problems()] == ["Route"]
    assert sample(plane, "knative_xds_rejected_objects", kind="Route") == 1

    plane.pipeline.apply(raw_objects(bad, delete=True))
    assert sample(plane, "knative_xds_rejected_objects", kind="Route") == 0

    withdrawn = sample(plane, "knative_xds_routes_withdrawn_total")
    harness.world.delete(synth.route("other", [synth.target("other-1", 100)]))
    assert sample(plane, "knative_xds_routes_withdrawn_total") == withdrawn + 1
    assert sample(plane, "knative_xds_mass_withdrawals_total") == 0  # half is not "most"

    # The last Route goes: all of what was served, at once.
    plane.pipeline.apply(raw_objects(synth.route("hello", []), delete=True))
    assert sample(plane, "knative_xds_routes_withdrawn_total") == withdrawn + 2
    assert sample(plane, "knative_xds_mass_withdrawals_total") == 1
    assert [(w["removed"], w["before"]) for w in status(plane)["withdrawals"]] == [(1, 1)]


def test_kingress_readiness_time_is_observed_once_every_gateway_holds_the_generation() -> None:
    from tests.test_status import HELLO, Plane, ack, gateway

    control = ControlPlane()
    control.report_status(None)  # files: readiness is tracked for /debug/status
    assert control.reporter is not None
    tracker = control.reporter.tracker
    # The plane takes up its reporter's tracker at its first publish, as serving does.
    control.pipeline.apply(raw_objects(synth.route("hello", [synth.target("hello-1", 100)])))
    first, second = gateway(), gateway()
    tracker.on_stream_open(first)
    tracker.on_stream_open(second)
    plane = Plane(tracker)
    snapshot = plane.serve(HELLO, "hello.example.com", 1)

    ack(tracker, first, snapshot, [HELLO])
    assert sample(control, "knative_xds_kingress_ready_seconds_count") == 0  # one of two
    ack(tracker, second, snapshot, [HELLO])
    assert tracker.readiness(HELLO).ready  # type: ignore[union-attr]
    assert sample(control, "knative_xds_kingress_ready_seconds_count") == 1
    # Ready sticks to its generation: a later ACK of it is not a second observation.
    ack(tracker, first, snapshot, [HELLO])
    assert sample(control, "knative_xds_kingress_ready_seconds_count") == 1
