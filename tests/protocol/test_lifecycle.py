"""Streams from start to end: the first state, bad requests, reconnects, and what a closed stream leaves."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from knative_xds import synth
from knative_xds.cache import Snapshot, SnapshotCache
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from knative_xds.translate import Delta

from .conftest import (
    HELLO_TABLES,
    Harness,
    base_objects,
    cluster,
    eventually,
    new_plane,
    raw_objects,
    start_harness,
)
from .xds_client import DeltaClient, SotwClient, names_in

HELLO, OTHER = cluster("hello-1"), cluster("other-1")
NODE = base_pb2.Node(id="raw-client")


def a_client(harness: Harness, flavour: str) -> SotwClient | DeltaClient:
    return harness.delta() if flavour == "delta" else harness.sotw()


def request(flavour: str, **fields: Any) -> Any:
    if flavour == "delta":
        return discovery_pb2.DeltaDiscoveryRequest(**fields)
    return discovery_pb2.DiscoveryRequest(**fields)


async def no_streams_left(harness: Harness, watches: int = 0) -> None:
    """Wait until the server has let go of every stream and every cache watch."""
    plane = harness.plane
    await eventually(lambda: not plane.ads.streams and plane.cache.watch_count == watches)


# -- refused and rejected streams -----------------------------------------------------------


async def test_request_without_type_url_ends_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    client = a_client(harness, flavour)
    await client.write(request(flavour))
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    await no_streams_left(harness)


async def test_request_for_an_unknown_type_ends_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    client = a_client(harness, flavour)
    await client.write(request(flavour, type_url="type.googleapis.com/envoy.Unknown"))
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert "envoy.Unknown" in await client.call.details()


async def test_bytes_that_are_no_discovery_request_end_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    method = "DeltaAggregatedResources" if flavour == "delta" else "StreamAggregatedResources"
    call = harness.channel.stream_stream(
        f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
        request_serializer=bytes,
        response_deserializer=bytes,
    )()
    await call.write(b"\xff\xff\xff")  # a field number of zero: not protobuf
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid xDS discovery request" in await call.details()
    await no_streams_left(harness)


async def test_first_request_without_a_node_ends_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    client = a_client(harness, flavour)
    await client.call.write(request(flavour, type_url=CLUSTER))  # bypasses the node stamping
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in await client.call.details()


async def test_a_stream_opened_before_the_first_state_waits_for_it_then_gets_all(
    flavour: str,
) -> None:
    harness = await start_harness(load=False)
    try:
        early = a_client(harness, flavour)
        await early.request(CLUSTER)
        # The server holds the stream (it watches for the first state) before any is in.
        await eventually(lambda: harness.plane.cache.watch_count == 1)

        harness.world.apply(*base_objects())

        # The same stream, not a retry: it is served as soon as the state is in, and
        # this is its first response: above all, no empty first push came before it.
        await early.expect_next_is(CLUSTER, [HELLO, OTHER])
    finally:
        await harness.close()
    assert harness.violations() == []


async def test_a_first_load_sends_clusters_and_endpoints_before_any_listener(
    flavour: str,
) -> None:
    """Envoy can warm clusters (seconds, at 10,000) while the route tables are still built."""
    harness = await start_harness(load=False)
    plane = harness.plane
    try:
        client = a_client(harness, flavour)
        for type_url in (CLUSTER, ENDPOINT, LISTENER):
            await client.request(type_url, [HELLO, OTHER] if type_url == ENDPOINT else ())
        # The first of the two steps `Pipeline.load` takes, held here at its midpoint.
        update = plane.resolver.apply(raw_objects(*base_objects()))
        plane.cache.apply(
            plane.translator.translate_backends(update), loaded=(CLUSTER, ENDPOINT, SECRET)
        )

        assert set(names_in(await client.recv(CLUSTER))) == {HELLO, OTHER}
        await client.ack(client.last[CLUSTER])
        assert set(names_in(await client.recv(ENDPOINT))) == {HELLO, OTHER}
        await client.ack(client.last[ENDPOINT])
        await harness.caught_up(client)

        rest = Delta()
        plane.translator.translate_ingresses(update, sorted(update.changed_ingresses), rest)
        plane.cache.apply(rest)
        # The first LDS response is the complete one: no partial (or empty) LDS came before.
        await client.expect_next_is(LISTENER, ["external", "internal"])
    finally:
        await harness.close()
    assert harness.violations() == []


async def test_the_staged_first_load_publishes_the_same_state_as_a_plain_one() -> None:
    staged, plain = new_plane(), new_plane()
    published: list[Snapshot] = []
    staged.cache.watch(_Recorder(staged.cache, published))

    await staged.pipeline.load(raw_objects(*base_objects()))
    plain.pipeline.apply(raw_objects(*base_objects()))

    assert [s.loaded for s in published] == [
        frozenset({CLUSTER, ENDPOINT, SECRET}),
        frozenset(PUSH_ORDER),
    ]
    assert not published[0].of(LISTENER) and not published[0].of(ROUTE)
    final, reference = staged.cache.current(), plain.cache.current()
    for type_url in PUSH_ORDER:
        assert {n: r.version for n, r in final.of(type_url).items()} == {
            n: r.version for n, r in reference.of(type_url).items()
        }


class _Recorder(asyncio.Event):
    """A cache watch that keeps every snapshot it is woken for."""

    def __init__(self, cache: SnapshotCache, into: list[Snapshot]) -> None:
        super().__init__()
        self._cache, self._into = cache, into

    def set(self) -> None:
        self._into.append(self._cache.current())


# -- versions and reconnects ------------------------------------------------------------------


async def test_every_version_is_prefixed_with_the_cache_instance(
    harness: Harness, flavour: str
) -> None:
    client = a_client(harness, flavour)
    for type_url in PUSH_ORDER:
        await client.request(type_url)
        response = await client.recv(type_url)
        version = response.system_version_info if flavour == "delta" else response.version_info
        assert version.startswith(harness.world.instance + "-")
        assert response.control_plane.identifier == f"knative-xds/{harness.world.instance}"
        await client.ack(response)


async def test_sotw_reconnect_with_another_instances_version_gets_the_full_state(
    harness: Harness,
) -> None:
    client = harness.sotw()

    # What a client that last spoke to another server (or an earlier run) sends first.
    await client.request(CLUSTER, nonce="41", version="0badcafe-7")

    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER}
    assert not response.version_info.startswith("0badcafe")


async def test_sotw_reconnect_with_this_instances_current_version_still_gets_the_full_state(
    harness: Harness,
) -> None:
    """A new stream is a fresh start: the client may have restarted with nothing."""
    first = harness.sotw()
    await first.request(ENDPOINT, [HELLO])
    held = await first.recv(ENDPOINT)
    await first.close()

    again = harness.sotw()
    await again.request(ENDPOINT, [HELLO], nonce=held.nonce, version=held.version_info)

    assert names_in(await again.recv(ENDPOINT)) == [HELLO]


# -- what a closed stream leaves behind ---------------------------------------------------------


async def test_client_disconnecting_mid_push_leaves_no_stream_and_no_watch(
    harness: Harness,
) -> None:
    plane = harness.plane
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(harness.channel).StreamAggregatedResources()
    for type_url in PUSH_ORDER:  # wildcard on every type, and never read a response
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=type_url))
    await eventually(lambda: len(plane.ads.streams) == 1 and plane.cache.watch_count == 1)
    (stream,) = plane.ads.streams.values()
    # Every type read and answered (an empty `subs` would pass `all` before any was read).
    await eventually(
        lambda: (
            len(stream.subs) == len(PUSH_ORDER)
            and all(sub.responded for sub in stream.subs.values())
        )
    )

    # Pushes big enough to fill the transport's window while nobody reads them.
    many = [synth.revision(f"r-{i}", ready=True) for i in range(300)]
    many += [synth.route(f"route-{i}", [synth.target(f"r-{i}", 100)]) for i in range(300)]
    harness.world.apply(*many)
    for i in range(5):
        harness.world.give_pods("hello-1", f"10.1.0.{i}")
    call.cancel()

    await no_streams_left(harness)
    assert stream.subs[CLUSTER].sent  # the stream did get going before the client left


async def test_client_half_closing_ends_its_stream_cleanly(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.recv(CLUSTER)

    await client.call.done_writing()

    assert await client.status() == grpc.StatusCode.OK
    await no_streams_left(harness)


async def test_server_stop_ends_open_streams_and_releases_their_watches() -> None:
    harness = await start_harness()
    client = harness.sotw()
    await client.request(LISTENER)
    await client.recv(LISTENER)

    await harness.plane.stop(grace=0)

    assert await client.status() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    await no_streams_left(harness)
    await harness.close()


@pytest.mark.timeout(30)
async def test_opening_and_closing_500_streams_leaks_no_task_and_no_memory(
    harness: Harness,
) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(harness.channel)

    async def one_stream() -> None:
        call = stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=CLUSTER))
        clusters = await call.read()
        ack = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce=clusters.nonce)
        await call.write(ack)
        await call.write(
            discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=HELLO_TABLES[:1])
        )
        assert (await call.read()).type_url == ROUTE
        call.cancel()

    async def batches(count: int, size: int = 50) -> None:
        for _ in range(count // size):
            async with asyncio.timeout(10):
                await asyncio.gather(*(one_stream() for _ in range(size)))
        await no_streams_left(harness)

    await batches(100)  # warm up: first-use allocations are not leaks
    gc.collect()
    tasks = len(asyncio.all_tasks())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await batches(500)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert len(asyncio.all_tasks()) <= tasks
    assert growth < 200_000, f"{growth} bytes kept after 500 streams ({growth // 500} per stream)"
