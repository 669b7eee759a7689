"""CSDS on the ADS port: what standard xDS tooling is told about each connected gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2

from knative_xds.resources import CLUSTER, LISTENER, ROUTE
from knative_xds.server.csds import MAX_ERROR_CHARS

from .protocol.conftest import Harness, eventually, start_harness

SYNCED, NOT_SENT, STALE, ERROR = (
    csds_pb2.SYNCED,
    csds_pb2.NOT_SENT,
    csds_pb2.STALE,
    csds_pb2.ERROR,
)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()
    try:
        yield h
    finally:
        await h.close()
    assert h.violations() == []


def stub(h: Harness) -> csds_pb2_grpc.ClientStatusDiscoveryServiceStub:
    return csds_pb2_grpc.ClientStatusDiscoveryServiceStub(h.channel)


async def fetch(h: Harness, *node_ids: str) -> csds_pb2.ClientStatusResponse:
    matchers = [node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact=n)) for n in node_ids]
    return await stub(h).FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=matchers))


def by_type(config: csds_pb2.ClientConfig) -> dict[str, csds_pb2.ClientConfig.GenericXdsConfig]:
    return {c.type_url: c for c in config.generic_xds_configs}


async def test_an_acked_type_is_synced_with_the_version_the_gateway_runs(harness: Harness) -> None:
    client = harness.sotw("gw-a")
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)
    await client.ack(response)
    await harness.caught_up(client)

    [config] = (await fetch(harness)).config
    assert config.node.id == "gw-a"
    assert config.node.metadata["knative_xds.protocol"] == "sotw"
    assert config.node.metadata["knative_xds.peer"].startswith("ipv4:127.0.0.1:")
    clusters = by_type(config)[CLUSTER]
    assert clusters.config_status == SYNCED
    assert clusters.client_status == dump_pb2.ACKED
    assert clusters.version_info == response.version_info
    assert clusters.last_updated.seconds > 0


async def test_a_sent_unanswered_type_is_stale_and_a_requested_one_not_sent(
    harness: Harness,
) -> None:
    client = harness.delta("gw-d")
    await client.request(CLUSTER)
    await client.recv(CLUSTER)  # not answered: in flight
    await harness.caught_up(client)

    [config] = (await fetch(harness)).config
    assert config.node.metadata["knative_xds.protocol"] == "delta"
    clusters = by_type(config)[CLUSTER]
    assert clusters.config_status == STALE
    assert clusters.client_status == dump_pb2.REQUESTED
    assert LISTENER not in by_type(config)  # never asked for: not listed


async def test_a_requested_type_with_nothing_sent_yet_is_not_sent(harness: Harness) -> None:
    client = harness.sotw("gw-r")
    await client.request(CLUSTER)
    await client.recv(CLUSTER)
    # A route table that does not exist is not sent over SotW: requested, nothing sent.
    await client.request(ROUTE, ["external/default/nope"])
    await harness.caught_up(client)

    routes = by_type((await fetch(harness)).config[0])[ROUTE]
    assert routes.config_status == NOT_SENT
    assert routes.client_status == dump_pb2.REQUESTED
    assert not routes.version_info


async def test_a_nack_shows_as_error_with_its_text_and_the_rejected_version(
    harness: Harness,
) -> None:
    client = harness.sotw("gw-n")
    await client.request(CLUSTER)
    first = await client.recv(CLUSTER)
    await client.ack(first)
    harness.world.add_revision_to_hello()
    second = await client.recv(CLUSTER)
    await client.nack(second, "cluster default/hello-2: bad\n" + "x" * 5000)
    await harness.caught_up(client)

    clusters = by_type((await fetch(harness)).config[0])[CLUSTER]
    assert clusters.config_status == ERROR
    assert clusters.client_status == dump_pb2.NACKED
    assert clusters.version_info == first.version_info  # what it keeps running
    assert clusters.error_state.version_info == second.version_info  # what it rejected
    assert clusters.error_state.details.startswith("cluster default/hello-2: bad")
    assert len(clusters.error_state.details) < MAX_ERROR_CHARS + 100

    # The next version accepted clears it.
    harness.world.move_hello_to("hello-3")
    third = await client.recv(CLUSTER)
    await client.ack(third)
    await harness.caught_up(client)
    clusters = by_type((await fetch(harness)).config[0])[CLUSTER]
    assert clusters.config_status == SYNCED
    assert clusters.version_info == third.version_info
    assert not clusters.HasField("error_state")


async def test_node_matchers_select_by_node_id_and_closed_streams_are_gone(
    harness: Harness,
) -> None:
    one, two = harness.sotw("gw-1"), harness.delta("gw-2")
    for client in (one, two):
        await client.request(CLUSTER)
        await client.recv(CLUSTER)
        await harness.caught_up(client)

    assert [c.node.id for c in (await fetch(harness)).config] == ["gw-1", "gw-2"]
    assert [c.node.id for c in (await fetch(harness, "gw-2")).config] == ["gw-2"]
    assert [c.node.id for c in (await fetch(harness, "gw-1", "nope")).config] == ["gw-1"]
    assert list((await fetch(harness, "nope")).config) == []

    await one.close()
    streams = harness.plane.ads.streams
    await eventually(lambda: all(s.status.node_id != "gw-1" for s in streams.values()))
    assert [c.node.id for c in (await fetch(harness)).config] == ["gw-2"]


async def test_the_streaming_call_answers_each_request(harness: Harness) -> None:
    client = harness.sotw("gw-s")
    await client.request(CLUSTER)
    await client.recv(CLUSTER)
    await harness.caught_up(client)

    call = stub(harness).StreamClientStatus()
    await call.write(csds_pb2.ClientStatusRequest())
    assert [c.node.id for c in (await call.read()).config] == ["gw-s"]
    matcher = node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact="other"))
    await call.write(csds_pb2.ClientStatusRequest(node_matchers=[matcher]))
    assert list((await call.read()).config) == []
    await call.done_writing()


async def test_an_unsupported_matcher_is_refused_with_a_reason(harness: Harness) -> None:
    regex = string_pb2.StringMatcher()
    regex.safe_regex.regex = "gw-.*"
    request = csds_pb2.ClientStatusRequest(node_matchers=[node_pb2.NodeMatcher(node_id=regex)])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub(harness).FetchClientStatus(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "safe_regex" in (error.value.details() or "")
