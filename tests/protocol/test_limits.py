"""Caps a client cannot exceed: names, streams per address, NACK text, stuck readers, and
state that goes when the stream does."""

from __future__ import annotations

import gc
import logging
import weakref

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from knative_xds.resources import CLUSTER, LISTENER, ROUTE, SCOPED_ROUTE
from knative_xds.server import subscription
from knative_xds.server.ads import peer_address
from knative_xds.server.limits import MAX_NACK_TEXT, MAX_NAMES, Limits

from .conftest import Harness, cluster, eventually, many_routes
from .xds_client import names_in


async def no_streams(harness: Harness) -> None:
    await eventually(lambda: not harness.plane.ads.streams and not harness.plane.ads.per_peer)


# -- names --------------------------------------------------------------------------------


async def test_a_request_naming_more_than_the_cap_ends_the_stream_with_invalid_argument(
    harness: Harness, flavour: str
) -> None:
    names = [f"no-such-table-{i}" for i in range(MAX_NAMES + 1)]
    if flavour == "delta":
        client = harness.delta()
        await client.request(ROUTE, names)
    else:
        client = harness.sotw()
        await client.request(ROUTE, names)
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_NAMES}" in await client.call.details()
    await no_streams(harness)


async def test_delta_names_added_over_several_requests_count_against_the_cap(
    harness: Harness,
) -> None:
    harness.plane.ads.limits = Limits(max_names=10)
    client = harness.delta()
    await client.request(ROUTE, [f"t-{i}" for i in range(6)])
    await client.ack(await client.recv(ROUTE))
    await client.request(ROUTE, [f"u-{i}" for i in range(5)])
    assert await client.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert "11 resources" in await client.call.details()


# -- streams per address ----------------------------------------------------------------------


async def test_streams_beyond_the_per_address_cap_are_refused_until_one_closes(
    harness: Harness,
) -> None:
    harness.plane.ads.limits = Limits(max_streams_per_peer=3)
    clients = [harness.sotw() for _ in range(3)]
    for client in clients:
        await client.request(CLUSTER)
        await client.recv(CLUSTER)

    refused = harness.sotw()
    await refused.request(CLUSTER)
    assert await refused.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "127.0.0.1 has 3 ADS streams open" in await refused.call.details()

    await clients[0].close()
    await eventually(lambda: harness.plane.ads.per_peer.get("127.0.0.1") == 2)
    later = harness.sotw()
    await later.request(CLUSTER)
    assert set(names_in(await later.recv(CLUSTER))) == {cluster("hello-1"), cluster("other-1")}


def test_peer_address_is_the_ip_without_the_port() -> None:
    assert peer_address("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:5555") == "::1"
    assert peer_address("unix:/run/xds.sock") == "unix:/run/xds.sock"


# -- NACK text and the NACK log -----------------------------------------------------------------


async def test_a_huge_nack_is_cut_in_log_and_status_and_leaves_with_its_stream(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "x" * 64 * 1024
    client = harness.sotw("nacker")
    await client.request(CLUSTER)
    with caplog.at_level(logging.WARNING, logger="knative_xds.server.stream"):
        await client.nack(await client.recv(CLUSTER), huge)
        await harness.caught_up(client)
    nack = harness.plane.ads.nacks[("nacker", CLUSTER)]
    assert nack.message.startswith("x" * MAX_NACK_TEXT)
    assert len(nack.message) < MAX_NACK_TEXT + 100
    stream = harness.stream_of(client)
    assert stream is not None
    assert stream.subs[CLUSTER].last_nack == nack
    logged = [r.getMessage() for r in caplog.records if "NACK" in r.getMessage()]
    assert logged and all(len(m) < MAX_NACK_TEXT + 200 for m in logged)

    await client.close()
    await no_streams(harness)
    assert harness.plane.ads.nacks == {}


async def test_a_nack_stays_while_another_stream_of_the_node_is_open(harness: Harness) -> None:
    first, second = harness.sotw("twice"), harness.sotw("twice")
    await first.request(CLUSTER)
    await first.nack(await first.recv(CLUSTER), "bad cluster")
    await second.request(CLUSTER)
    await second.recv(CLUSTER)
    # Both streams share the node id, so the NACK itself shows the server read it.
    await eventually(lambda: ("twice", CLUSTER) in harness.plane.ads.nacks)
    await first.close()
    await eventually(lambda: len(harness.plane.ads.streams) == 1)
    assert harness.plane.ads.nacks[("twice", CLUSTER)].message == "bad cluster"
    await second.close()
    await no_streams(harness)
    assert harness.plane.ads.nacks == {}


async def test_nacks_from_many_node_ids_leave_nothing_behind(harness: Harness) -> None:
    for i in range(50):
        client = harness.sotw(f"node-{i}")
        await client.request(CLUSTER)
        await client.nack(await client.recv(CLUSTER), "y" * 4096)
        await harness.caught_up(client)
        await client.close()
    await no_streams(harness)
    assert harness.plane.ads.nacks == {}


# -- state freed on close ---------------------------------------------------------------------


async def test_streams_asking_for_100000_unknown_names_leave_nothing_when_closed(
    harness: Harness,
) -> None:
    shared_before = subscription.interned_name_sets()
    subs = []
    for round_ in range(3):
        client = harness.sotw(f"greedy-{round_}")
        await client.request(ROUTE, [f"unknown-{round_}-{i}" for i in range(100_000)])
        await harness.caught_up(client)
        stream = harness.stream_of(client)
        assert stream is not None and len(stream.subs[ROUTE].names) == 100_000
        subs.append(weakref.ref(stream.subs[ROUTE]))
        del stream
        await client.close()
    await no_streams(harness)
    gc.collect()
    assert [s for s in subs if s() is not None] == []
    assert subscription.interned_name_sets() <= shared_before


# -- slow and stuck readers -------------------------------------------------------------------


def a_reader_that_stops(harness: Harness, node_id: str) -> tuple[grpc.aio.Channel, object]:
    """A client with a small receive window that asks for everything and never reads."""
    channel = grpc.aio.insecure_channel(
        harness.address,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)],
    )
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    return channel, call


async def ask_everything(call, node_id: str) -> None:
    node = base_pb2.Node(id=node_id)
    for type_url in (CLUSTER, LISTENER, SCOPED_ROUTE):
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url))


def stream_of_node(harness: Harness, node_id: str):
    return next(
        (s for s in harness.plane.ads.streams.values() if s.status.node_id == node_id), None
    )


async def test_a_client_that_never_reads_is_cut_after_the_send_deadline(harness: Harness) -> None:
    harness.plane.ads.limits = Limits(send_deadline=0.5)
    harness.world.apply(*many_routes(30))
    channel, call = a_reader_that_stops(harness, "stuck")
    try:
        await ask_everything(call, "stuck")
        await eventually(lambda: stream_of_node(harness, "stuck") is not None)
        await no_streams(harness)  # cut by the server: the client never read or closed
    finally:
        call.cancel()
        await channel.close()


async def test_a_client_that_never_reads_does_not_hold_up_another_clients_edit(
    harness: Harness,
) -> None:
    harness.world.apply(*many_routes(30))
    channel, call = a_reader_that_stops(harness, "stuck")
    try:
        await ask_everything(call, "stuck")

        def blocked() -> bool:
            stream = stream_of_node(harness, "stuck")
            return stream is not None and stream.status.sending_since is not None

        await eventually(blocked)
        client = harness.sotw()
        await client.request(CLUSTER)
        await client.ack(await client.recv(CLUSTER))
        harness.world.add_later_route()
        assert cluster("later-1") in names_in(await client.recv(CLUSTER))
        assert blocked(), "the stuck client's send is still waiting"
    finally:
        call.cancel()
        await channel.close()
