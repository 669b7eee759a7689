"""The activator's h2c port, with gRPC on both sides: grpcio's client, grpcio's server.

gRPC is what h2c revisions serve, and it needs what an HTTP/1.1 proxy cannot give:
HTTP/2 with prior knowledge, `te: trailers`, and the status in trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator

import grpc
import pytest

from knative_xds.local.activator import LocalActivator
from knative_xds.local.h2c import Peer
from knative_xds.model import ObjectKey

from .test_activator import KEY, MB, FakeRevisions, at, until

METADATA = (("knative-serving-revision", KEY.name), ("knative-serving-namespace", KEY.namespace))
PIECE = b"g" * (64 * 1024)
STREAMED = 50 * MB


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    seen = dict(context.invocation_metadata())
    context.set_trailing_metadata((("served-by", seen.get("knative-serving-revision", "")),))
    return request + b" back, forwarded for " + seen.get("x-forwarded-for", "").encode()


async def _count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    total = 0
    async for piece in requests:
        total += len(piece)
    return str(total).encode()


async def _download(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(int(request) // len(PIECE)):
        yield PIECE


HOLD_CANCELLED: list[bool] = []


async def _hold(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """One message, then nothing until the call is cancelled."""
    yield b"held"
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        HOLD_CANCELLED.append(True)
        raise


@pytest.fixture
async def grpc_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Count": grpc.stream_unary_rpc_method_handler(_count),
        "Download": grpc.unary_stream_rpc_method_handler(_download),
        "Hold": grpc.unary_stream_rpc_method_handler(_hold),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def h2c_channel(revisions: FakeRevisions, **options) -> AsyncIterator[grpc.aio.Channel]:
    activator = LocalActivator(revisions, **options)
    await activator.start(h2c_port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{activator.h2c_port}") as channel:
            channel.activator = activator  # type: ignore[attr-defined]
            yield channel
    finally:
        await activator.close()


async def test_a_grpc_call_wakes_the_revision_and_its_trailers_come_back(grpc_port):
    revisions = FakeRevisions(at(grpc_port))
    async with h2c_channel(revisions) as channel:
        call = channel.unary_unary("/test.Echo/Unary")(b"hi", metadata=METADATA, timeout=10)
        assert await call == b"hi back, forwarded for 127.0.0.1"
        assert await call.code() == grpc.StatusCode.OK
        assert ("served-by", KEY.name) in tuple(await call.trailing_metadata())
    assert revisions.woken == [KEY]


async def test_a_grpc_error_status_passes_through(grpc_port):
    async with h2c_channel(FakeRevisions(at(grpc_port))) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary("/test.Echo/Unary")(b"missing", metadata=METADATA, timeout=10)
    assert (failed.value.code(), failed.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "no such thing",
    )


async def test_50_mb_stream_up_and_down_without_being_held(grpc_port):
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(STREAMED // len(PIECE)):
            yield PIECE

    async with h2c_channel(FakeRevisions(at(grpc_port))) as channel:
        tracemalloc.start()
        try:
            count = channel.stream_unary("/test.Echo/Count")
            assert await count(pieces(), metadata=METADATA, timeout=60) == str(STREAMED).encode()
            received = 0
            download = channel.unary_stream("/test.Echo/Download")
            async for piece in download(str(STREAMED).encode(), metadata=METADATA, timeout=60):
                if not received:
                    # A slow reader: the activator must stop taking the revision's data
                    # (hold back its window), not queue all of it meanwhile.
                    await asyncio.sleep(1.0)
                received += len(piece)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert received == STREAMED
    # Client, activator and server share this process; one 1 MiB window per stream may be
    # in flight. Held whole, the 50 MB would show.
    assert peak < 12 * MB, f"peak {peak / MB:.1f} MB"


async def test_a_cold_start_past_the_timeout_is_504_and_a_full_queue_503():
    never = asyncio.Event()

    async def hang() -> int:
        await never.wait()
        return 1

    revisions = FakeRevisions(hang, timeout=0.5)
    async with h2c_channel(revisions, queue_depth=1) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        first = asyncio.ensure_future(unary(b"hi", metadata=METADATA, timeout=10))
        activator: LocalActivator = channel.activator  # type: ignore[attr-defined]
        await until(lambda: activator.waiting(KEY) == 1, "the first call queued")
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await unary(b"hi", metadata=METADATA, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await first
    # gRPC reports an HTTP status it got instead of a gRPC one as UNAVAILABLE, naming it.
    assert "status: 503" in full.value.details()
    assert "status: 504" in late.value.details()


async def _raw_h2c(port: int, headers: list[tuple[bytes, bytes]]) -> tuple[dict, bytes]:
    """One request on a bare h2c connection: its response headers and body."""
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_connection(
        lambda: Peer(client_side=True), "127.0.0.1", port
    )
    try:
        sid, stream = peer.open(headers)
        await peer.send_data(sid, b"", end_stream=True)
        async with asyncio.timeout(5):
            head = dict(await stream.head)
            body = b""
            while isinstance(item := await stream.inbox.get(), tuple):
                body += item[0]
        return head, body
    finally:
        transport.close()


async def test_the_activator_probe_on_the_h2c_port_is_answered_without_waking(grpc_port):
    revisions = FakeRevisions(at(grpc_port))
    async with h2c_channel(revisions) as channel:
        activator: LocalActivator = channel.activator  # type: ignore[attr-defined]
        assert activator.h2c_port is not None
        probe = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"activator"),
            (b":path", b"/"),
            (b"k-network-probe", b"activator"),
        ]
        head, body = await _raw_h2c(activator.h2c_port, probe)
        assert (head[b":status"], body) == (b"200", b"activator\n")
        # A gRPC call afterwards is the first to wake the revision.
        await channel.unary_unary("/test.Echo/Unary")(b"hi", metadata=METADATA, timeout=10)
    assert revisions.woken == [ObjectKey(KEY.namespace, KEY.name)]


async def test_a_call_the_client_cancels_is_cancelled_at_the_revision(grpc_port):
    HOLD_CANCELLED.clear()
    async with h2c_channel(FakeRevisions(at(grpc_port))) as channel:
        call = channel.unary_stream("/test.Echo/Hold")(b"", metadata=METADATA, timeout=30)
        assert await call.read() == b"held"
        call.cancel()
        # The client's RST_STREAM reaches the revision as a reset of its own stream.
        await until(lambda: HOLD_CANCELLED == [True], "the revision to see the cancel")
