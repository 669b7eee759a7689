"""The gRPC Aggregated Discovery Service: SotW and Delta streams over one snapshot cache.

Responses leave as bytes already serialized (the header fields plus entries
shared by every stream), so the method handlers are registered by hand with an
identity serializer instead of the generated servicer helper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError, Message

from ..cache import ConfigCache
from .callbacks import Callbacks, Fanout, NackLog
from .stream import ProtocolError, Stream
from .subscription import Nack

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", -1),
    # Envoy keeps one long-lived stream; let it ping to keep NATs and proxies from cutting it.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def _identity(data: bytes) -> bytes:
    return data


class _Received:
    """A request's bytes, decoded once by the stream and then let go of.

    gRPC's receiver keeps the last message it handed over until the next one
    arrives. An Envoy's SotW request names every route table or cluster it wants
    (10,000 names is most of a megabyte once decoded), so holding the decoded
    request there would cost that much per connected gateway while it idles.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data


async def _decoded(
    received: AsyncIterator[_Received], decode: Callable[[bytes], Message]
) -> AsyncIterator[Message]:
    async for item in received:
        data, item.data = item.data, None
        try:
            message = decode(data or b"")
        except DecodeError as e:
            raise ProtocolError(f"the request is not a valid xDS discovery request: {e}") from e
        yield message
        del message  # nothing of it stays here while the next one is awaited


class AdsServer:
    """Serves every gateway the same snapshot; keeps per-stream status and NACKs for operators.

    Observers of the streams (status readiness, metrics) watch through `callbacks`,
    given here or added later with `observe`; the NACK log is one of them.
    """

    def __init__(self, cache: ConfigCache, callbacks: Iterable[Callbacks] = ()) -> None:
        self.cache = cache
        self.streams: dict[int, Stream] = {}
        self._nack_log = NackLog()
        self.callbacks = Fanout((self._nack_log, *callbacks))

    @property
    def nacks(self) -> dict[tuple[str, str], Nack]:
        """The last rejection per (node id, type URL): what an operator asks first."""
        return self._nack_log.nacks

    def observe(self, observer: Callbacks) -> Callable[[], None]:
        """Add an observer of every stream, open or to come; returns its removal."""
        self.callbacks.add(observer)
        return lambda: self.callbacks.remove(observer)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw,
                    request_deserializer=_Received,
                    response_serializer=_identity,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta,
                    request_deserializer=_Received,
                    response_serializer=_identity,
                ),
            },
        )

    async def _sotw(self, requests: AsyncIterator, context: grpc.aio.ServicerContext) -> None:
        decoded = _decoded(requests, discovery_pb2.DiscoveryRequest.FromString)
        await self._serve(decoded, context, delta=False)

    async def _delta(self, requests: AsyncIterator, context: grpc.aio.ServicerContext) -> None:
        decoded = _decoded(requests, discovery_pb2.DeltaDiscoveryRequest.FromString)
        await self._serve(decoded, context, delta=True)

    async def _serve(
        self, requests: AsyncIterator, context: grpc.aio.ServicerContext, *, delta: bool
    ) -> None:
        if self.cache.current() is None:
            # An empty first push would wipe a running gateway, so nothing is read or sent
            # before the first state. The stream waits for it rather than being refused:
            # a refused Envoy backs off (up to seconds) and would come back late.
            await self._first_state()
        stream = Stream(
            cache=self.cache, delta=delta, peer=context.peer(), callbacks=self.callbacks
        )
        self.streams[stream.status.id] = stream
        self.callbacks.on_stream_open(stream.status)
        log.info(
            "stream %s opened from %s (%s)",
            stream.status.id,
            context.peer(),
            "delta" if delta else "sotw",
        )
        try:
            await stream.serve(requests, context.write)
        except* ProtocolError as group:
            message = str(group.exceptions[0])
            log.warning(
                "stream %s (%s): %s", stream.status.id, stream.status.node_id or "?", message
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        finally:
            del self.streams[stream.status.id]
            self.callbacks.on_stream_close(stream.status)
            log.info("stream %s closed (%s)", stream.status.id, stream.status.node_id or "?")

    async def _first_state(self) -> None:
        published = asyncio.Event()
        cancel = self.cache.watch(published)
        try:
            while self.cache.current() is None:
                await published.wait()
                published.clear()
        finally:
            cancel()


async def start(ads: AdsServer, address: str) -> tuple[grpc.aio.Server, int]:
    """Start serving on `address` (`host:port`, port 0 picks one); return the server and port."""
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((ads.handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address} for xDS: is the port in use?")
    await server.start()
    return server, port
