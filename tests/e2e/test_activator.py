"""The local activator behind the real Envoy: a revision with no endpoints is served through it.

The gateway sends a revision at zero to the activator's EndpointSlice; the activator
wakes the revision (here: starts an echo app, or a gRPC server for an h2c revision)
and forwards. What must hold end to end: the answer comes from the woken app, a
websocket passes, a 50 MB upload streams through both proxies to the app, and a
gRPC call reaches an h2c revision through the activator's h2c port.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from knative_xds import synth as s
from knative_xds.local.activator import LocalActivator
from knative_xds.local.echo import bound_port, serve_echo
from knative_xds.model import ObjectKey

NAME = "sleepy-00001"
HOST = "sleepy.default.example.com"
GRPC_NAME = "pinger-00001"
GRPC_HOST = "pinger.default.example.com"
MB = 1024 * 1024


async def _ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return (
        request
        + b" from "
        + dict(context.invocation_metadata())["knative-serving-revision"].encode()
    )


class OneEchoRevision:
    """`sleepy-00001` is an echo app, started by its first wake; `pinger-00001` (h2c) a
    gRPC server, started by its first wake."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.grpc: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.woken = 0

    async def wake(self, key: ObjectKey) -> int:
        if key.name == GRPC_NAME:
            if self.grpc is None:
                self.grpc = grpc.aio.server()
                ping = {"Ping": grpc.unary_unary_rpc_method_handler(_ping)}
                handler = grpc.method_handlers_generic_handler("test.Pinger", ping)
                self.grpc.add_generic_rpc_handlers((handler,))
                self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
                await self.grpc.start()
            return self.grpc_port
        if key.name != NAME:
            raise LookupError(f"revision {key} has no local `command` to run")
        self.woken += 1
        if self.server is None:
            self.server = await serve_echo(NAME)
        return bound_port(self.server)

    def timeout_seconds(self, key: ObjectKey) -> float:
        return 30.0


@pytest.fixture
async def at_zero(sotw_gateway) -> AsyncIterator[tuple[OneEchoRevision, str]]:
    revisions = OneEchoRevision()
    activator = LocalActivator(revisions)
    port = await activator.start(h2c_port=0)
    try:
        await sotw_gateway.start(
            [
                s.route("sleepy", [s.target(NAME, 100)]),
                s.revision(NAME),  # no EndpointSlice: at zero, the activator's endpoints serve it
                s.route("pinger", [s.target(GRPC_NAME, 100)]),
                s.revision(GRPC_NAME, h2c=True),
                s.activator_slice("127.0.0.1", port, activator.h2c_port),
            ]
        )
        url = f"http://127.0.0.1:{sotw_gateway.external}"

        async def through_activator() -> bool:
            return (await sotw_gateway.get(HOST)).revision == NAME

        await sotw_gateway.wait_until(through_activator, what="sleepy to be served")
        yield revisions, url
    finally:
        await activator.close()
        if revisions.server is not None:
            revisions.server.close()
        if revisions.grpc is not None:
            await revisions.grpc.stop(0)


async def test_a_revision_at_zero_is_woken_by_the_first_request_through_envoy(at_zero):
    revisions, url = at_zero
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{url}/a?b=c", headers={"Host": HOST}) as r,
    ):
        assert r.status == 200
        echo = await r.json()
    assert (echo["revision"], echo["path"]) == (NAME, "/a?b=c")
    assert echo["headers"]["knative-serving-revision"] == NAME
    assert revisions.woken >= 2  # the readiness wait's request, then this one


async def test_a_websocket_reaches_the_revision_through_envoy_and_the_activator(at_zero):
    _, url = at_zero
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"{url}/ws", headers={"Host": HOST}) as ws,
    ):
        for text in ("one", "two"):
            await ws.send_str(text)
            assert (await ws.receive(timeout=10)).data == text


async def _chunks(total: int) -> AsyncIterator[bytes]:
    chunk = b"k" * (64 * 1024)
    for _ in range(total // len(chunk)):
        yield chunk


async def test_a_50_mb_upload_streams_through_envoy_and_the_activator(at_zero):
    _, url = at_zero
    size = 50 * MB
    async with aiohttp.ClientSession() as client:
        tracemalloc.start()
        try:
            async with client.post(f"{url}/up", headers={"Host": HOST}, data=_chunks(size)) as r:
                assert r.status == 200
                assert (await r.json())["body_bytes"] == size
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # The client, the activator and the app share this process: held whole, 50 MB would show.
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB"


async def test_a_grpc_call_reaches_an_h2c_revision_at_zero_through_the_h2c_port(
    at_zero, sotw_gateway
):
    target = f"127.0.0.1:{sotw_gateway.external}"
    options = (("grpc.default_authority", GRPC_HOST),)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        reply = await channel.unary_unary("/test.Pinger/Ping")(b"ping", timeout=20)
    assert reply == f"ping from {GRPC_NAME}".encode()
