"""Streams from start to end: refusals, bad requests, reconnects, and what a closed stream leaves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE

from .conftest import HELLO_TABLES, Harness, base_objects, cluster, eventually, start_harness
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


async def test_first_request_without_a_node_ends_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    client = a_client(harness, flavour)
    await client.call.write(request(flavour, type_url=CLUSTER))  # bypasses the node stamping
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in await client.call.details()


async def test_streams_are_refused_with_unavailable_until_the_first_snapshot(
    flavour: str,
) -> None:
    harness = await start_harness(load=False)
    try:
        refused = a_client(harness, flavour)
        # The server may refuse the stream before the request is even written.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await refused.request(CLUSTER)
        status = await refused.status()
        assert status == grpc.StatusCode.UNAVAILABLE, await refused.call.details()
        assert refused.received == []  # above all, no empty first push

        harness.world.apply(*base_objects())

        served = a_client(harness, flavour)
        await served.request(CLUSTER)
        assert set(names_in(await served.recv(CLUSTER))) == {HELLO, OTHER}
    finally:
        await harness.close()
    assert harness.violations() == []


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
