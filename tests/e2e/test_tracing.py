"""Tracing (`tracing-*` in config-xds) through the real Envoy, to a local OTLP receiver over
gRPC and over OTLP/HTTP: at sampling rate 1 a span per request, whose trace id is the one
in the `traceparent` the revision saw (through the activator too); at rate 0 none; the
switch re-sends the listeners and no route table, with nothing restarted."""

from __future__ import annotations

import asyncio
import contextlib
import http.client

import pytest

from knative_xds import synth
from knative_xds.local.activator import LocalActivator
from knative_xds.resources import CLUSTER, LISTENER, ROUTE, short
from knative_xds.server.callbacks import Callbacks, StreamStatus
from tests.otlp_receiver import grpc_receiver, http_receiver

from .gateway import Gateway, Reply, request
from .test_activator import HOST as SLEEPY
from .test_activator import NAME as SLEEPY_REVISION
from .test_activator import OneEchoRevision

HELLO = "hello.default.example.com"
# Envoy's tracer sends its spans in batches of 5 (runtime `min_flush_spans`) per worker,
# or every 5 s: each batch of requests here is 5, over one connection (one worker).
BATCH = 5
RECEIVERS = {"grpc": grpc_receiver, "http": http_receiver}
LDS, CDS, RDS = short(LISTENER), short(CLUSTER), short(ROUTE)


class Pushes(Callbacks):
    """The type of every response the control plane sends, in order."""

    def __init__(self) -> None:
        self.types: list[str] = []

    def on_response(
        self, status: StreamStatus, type_url: str, version: str, count: int, size: int
    ) -> None:
        self.types.append(short(type_url))


def config_xds(**data: str) -> dict:
    return synth.config_map("config-xds", {k.replace("_", "-"): v for k, v in data.items()})


def batch(port: int, host: str, marks: list[str]) -> list[Reply]:
    """One GET per mark over one fresh keep-alive connection (blocking: run it in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return [request(port, host, headers={"X-Mark": m}, conn=conn) for m in marks]
    finally:
        conn.close()


def trace_id(reply: Reply) -> str:
    """The trace id of the `traceparent` the revision was sent: 00-<trace>-<span>-<flags>."""
    version, trace, _span, _flags = reply.headers["traceparent"].split("-")
    assert version == "00", reply.headers["traceparent"]
    return trace


async def listeners_replaced(gateway: Gateway, before: int) -> None:
    """Both plain listeners modified since `before` and none warming: a new connection is
    served by the new filter chain."""

    def done() -> bool:
        stats = gateway.envoy_stats(r"^listener_manager\.(listener_modified|total_listeners_warm)")
        return (
            stats.get("listener_manager.listener_modified", 0) >= before + 2
            and stats.get("listener_manager.total_listeners_warming", 1) == 0
        )

    await gateway.wait_until(done, what="the new listeners to serve")


async def route_tables_follow(gateway: Gateway, pushes: Pushes, objects: list[dict]) -> list[str]:
    """What was pushed before a route-table change made now (a new request timeout)."""
    await gateway.wait_until(lambda: LDS in pushes.types, what="the listeners' push")
    gateway.write(objects)
    await gateway.wait_until(lambda: RDS in pushes.types, what="the marker's route tables")
    return pushes.types[: pushes.types.index(RDS)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_no_span_at_rate_0_then_one_per_request_at_rate_1_after_a_listeners_only_switch(
    sotw_gateway: Gateway, protocol: str
) -> None:
    gateway = sotw_gateway
    async with RECEIVERS[protocol]() as (port, received):
        endpoint = f"http://127.0.0.1:{port}" + ("/v1/traces" if protocol == "http" else "")
        tracing = {
            "tracing_endpoint": endpoint,
            "tracing_protocol": "grpc" if protocol == "grpc" else "http/protobuf",
            "tracing_service_name": "gateway-under-test",
        }
        gateway.write([config_xds(**tracing, tracing_sampling_rate="0")], "config-xds.yaml")
        revisions = await gateway.ready_revisions("hello-1")
        route = synth.route("hello", [synth.target("hello-1", 100)])
        await gateway.start([*revisions, route])
        await gateway.wait_served(HELLO, "hello-1")
        assert gateway.plane is not None
        pid = gateway.envoy_pid

        unsampled = await asyncio.to_thread(batch, gateway.external, HELLO, ["zero"] * BATCH)
        assert all(r.headers.get("x-request-id") for r in unsampled), unsampled

        pushes = Pushes()
        gateway.plane.ads.observe(pushes)
        modified = gateway.envoy_stat("listener_manager.listener_modified")
        gateway.write([config_xds(**tracing, tracing_sampling_rate="1")], "config-xds.yaml")
        marker = [synth.revision("hello-1", timeout=123), *revisions[1:], route]
        assert set(await route_tables_follow(gateway, pushes, marker)) == {LDS}, pushes.types
        await listeners_replaced(gateway, modified)

        marks = ["marked", *[f"after-{i}" for i in range(BATCH - 1)]]
        sampled = await asyncio.to_thread(batch, gateway.external, HELLO, marks)
        assert [r.revision for r in sampled] == ["hello-1"] * BATCH
        spans = await received.wait_for(BATCH)
        # The first span sent is the marked request's: none came from the requests at 0.
        assert spans[0].trace_id == trace_id(sampled[0]), (spans, sampled[0].headers)
        assert [s.trace_id for s in spans] == [trace_id(r) for r in sampled]
        assert {s.service_name for s in spans} == {"gateway-under-test"}
        # The span's own id is the parent the revision was given, and it carries the
        # request id Envoy generated and sent on.
        first = sampled[0].headers
        assert first["traceparent"].split("-")[2] == spans[0].span_id
        assert first["x-request-id"] and first["x-request-id"] in spans[0].attributes.values()
        assert gateway.envoy_pid == pid, "Envoy was not restarted"


async def test_the_activator_path_keeps_the_gateways_trace_and_switching_on_sends_cluster_and_listeners(
    sotw_gateway: Gateway,
) -> None:
    gateway = sotw_gateway
    revisions = OneEchoRevision()
    activator = LocalActivator(revisions)
    activator_port = await activator.start()
    stack = contextlib.AsyncExitStack()
    try:
        port, received = await stack.enter_async_context(grpc_receiver())
        world = [
            synth.route("sleepy", [synth.target(SLEEPY_REVISION, 100)]),
            synth.revision(SLEEPY_REVISION),  # no EndpointSlice: served by the activator
            synth.activator_slice("127.0.0.1", activator_port),
        ]
        await gateway.start(world)
        await gateway.wait_served(SLEEPY, SLEEPY_REVISION)
        assert gateway.plane is not None

        pushes = Pushes()
        gateway.plane.ads.observe(pushes)
        modified = gateway.envoy_stat("listener_manager.listener_modified")
        gateway.write([config_xds(tracing_endpoint=f"127.0.0.1:{port}")], "config-xds.yaml")
        marker = [synth.revision(SLEEPY_REVISION, timeout=77), *world[:1], *world[2:]]
        # The collector's cluster first, then the listeners that name it; no route table.
        assert await route_tables_follow(gateway, pushes, marker) == [CDS, LDS], pushes.types
        await listeners_replaced(gateway, modified)

        replies = await asyncio.to_thread(batch, gateway.external, SLEEPY, ["a"] * BATCH)
        assert [r.revision for r in replies] == [SLEEPY_REVISION] * BATCH
        wanted = {trace_id(r) for r in replies}
        assert len(wanted) == BATCH
        spans = await received.wait_for(BATCH)
        assert {s.trace_id for s in spans} == wanted
        assert {s.service_name for s in spans} == {"kourier-knative"}  # Kourier's default
    finally:
        await stack.aclose()
        await activator.close()
        if revisions.server is not None:
            revisions.server.close()
