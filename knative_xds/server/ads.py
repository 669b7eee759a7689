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
from . import csds
from .callbacks import Callbacks, Fanout, NackLog
from .limits import DEFAULT_LIMITS, MAX_REQUEST_BYTES, Limits
from .stream import ProtocolError, Stream, StuckClient
from .subscription import Nack, release_names
from .tls import TlsFiles, server_credentials
from .turns import Turns

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
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

    def __init__(
        self,
        cache: ConfigCache,
        callbacks: Iterable[Callbacks] = (),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.cache = cache
        self.limits = limits
        # Shared by every stream: their large plans are taken one at a time.
        self.turns = Turns()
        self.streams: dict[int, Stream] = {}
        # Streams open (or waiting for the first state) per peer address.
        self.per_peer: dict[str, int] = {}
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
        address = peer_address(context.peer())
        open_here = self.per_peer.get(address, 0)
        if open_here >= self.limits.max_streams_per_peer:
            log.warning("refused a stream from %s: %d already open", address, open_here)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{address} has {open_here} ADS streams open, the most one address may hold; "
                "close one first",
            )
        self.per_peer[address] = open_here + 1
        try:
            await self._serve_counted(requests, context, delta=delta)
        finally:
            left = self.per_peer.pop(address) - 1
            if left:
                self.per_peer[address] = left

    async def _serve_counted(
        self, requests: AsyncIterator, context: grpc.aio.ServicerContext, *, delta: bool
    ) -> None:
        if self.cache.current() is None:
            # An empty first push would wipe a running gateway, so nothing is read or sent
            # before the first state. The stream waits for it rather than being refused:
            # a refused Envoy backs off (up to seconds) and would come back late.
            await self._first_state()
        stream = Stream(
            cache=self.cache,
            delta=delta,
            peer=context.peer(),
            callbacks=self.callbacks,
            limits=self.limits,
            turns=self.turns,
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
        except* StuckClient as group:
            message = str(group.exceptions[0])
            log.warning(
                "stream %s (%s): %s", stream.status.id, stream.status.node_id or "?", message
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        finally:
            del self.streams[stream.status.id]
            self.callbacks.on_stream_close(stream.status)
            log.info("stream %s closed (%s)", stream.status.id, stream.status.node_id or "?")
            # The name sets it shared (100,000 names, perhaps) go with it, unless another
            # stream still uses them.
            release_names(stream.status.subs.values())

    async def _first_state(self) -> None:
        published = asyncio.Event()
        cancel = self.cache.watch(published)
        try:
            while self.cache.current() is None:
                await published.wait()
                published.clear()
        finally:
            cancel()


def peer_address(peer: str) -> str:
    """The client's IP address from gRPC's peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer  # a Unix socket or an unknown transport: the whole string
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


async def start(
    ads: AdsServer, address: str, tls: TlsFiles | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start serving ADS and CSDS on `address` (`host:port`, port 0 picks one); return the
    server and port. With `tls`, over TLS; with its CA, only to clients it signed."""
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((ads.handler(),))
    csds.add_to(server, ads)
    if tls is not None:
        port = server.add_secure_port(address, server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address} for xDS: is the port in use?")
    await server.start()
    return server, port
