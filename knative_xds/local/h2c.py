"""The activator's h2c port: HTTP/2 without TLS (gRPC's transport), relayed stream by stream.

Knative's activator has a second port for revisions that speak h2c; the gateway
sends their requests there as HTTP/2. Each stream is held while its revision
wakes (the same queue and deadline as the HTTP/1.1 port), then relayed on one
pooled h2c connection per revision process. Frames are the `h2` library's
(python-hyper): this module only moves its events between two connections.

Bodies stream in both directions and are never held: received data is
acknowledged (re-opening the sender's flow-control window) only once it has
been passed on, so at most one window per stream is in memory. Trailers pass
through, which gRPC's status needs, and a reset on either side resets the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from multidict import CIMultiDict

from ..model import ObjectKey
from .activator import HOP_BY_HOP, PROBE_HEADER, PROBE_VALUE, Refused, revision_key
from .throttle import Lease

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
# Per-stream receive window: what one stream may have in flight towards us.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024

_END = object()  # the peer ended the stream (trailers, if any, are on the stream)
_RESET = object()  # the stream was reset: by the peer, or here


class StreamGone(ConnectionError):
    """The stream (or its whole connection) was reset or closed before we were done."""


class _Stream:
    __slots__ = ("ended", "head", "inbox", "on_reset", "reset", "trailers")

    def __init__(self) -> None:
        self.head: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[tuple[bytes, int] | object] = asyncio.Queue()
        self.trailers: Headers | None = None
        self.ended = False  # the head came with END_STREAM: no body, no trailers
        self.reset = False
        # Called once on a reset: the relay resets the other side even when nothing is
        # reading this stream's inbox any more (its request body already went through).
        self.on_reset: Callable[[], None] | None = None

    def fail(self) -> None:
        self.reset = True
        if not self.head.done():
            self.head.set_exception(StreamGone("reset before its head"))
        self.inbox.put_nowait(_RESET)
        if self.on_reset is not None:
            callback, self.on_reset = self.on_reset, None
            callback()


class Peer(asyncio.Protocol):
    """One HTTP/2 connection, either side: h2's state machine plus a queue per stream."""

    def __init__(
        self, *, client_side: bool, on_request: Callable[[Peer, int, _Stream], None] | None = None
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._on_request = on_request
        self._streams: dict[int, _Stream] = {}
        self._transport: asyncio.Transport | None = None
        self._window = asyncio.Event()  # set when a send window may have opened
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()

    @property
    def peer_address(self) -> str | None:
        name = self._transport.get_extra_info("peername") if self._transport else None
        return name[0] if name else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            stream.fail()
        self._streams.clear()
        self.closed.set()
        self._window.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("activator: h2c protocol error, closing the connection: %s", e)
            self._flush()
            self.close()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RequestReceived) and self._on_request is not None:
            stream = self._streams[event.stream_id] = _Stream()
            stream.head.set_result(event.headers)
            self._on_request(self, event.stream_id, stream)
        elif isinstance(event, h2.events.ResponseReceived) and stream and not stream.head.done():
            stream.ended = event.stream_ended is not None
            stream.head.set_result(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and stream:
            stream.trailers = event.headers
        elif isinstance(event, h2.events.DataReceived) and stream:
            stream.inbox.put_nowait((event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.DataReceived):
            # A stream we forgot: give its window back, or the connection's would shrink.
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream.inbox.put_nowait(_END)
        elif isinstance(event, h2.events.StreamReset) and stream:
            stream.fail()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- used by the relay --------------------------------------------------------------

    def open(self, headers: Headers) -> tuple[int, _Stream]:
        """A new stream (client side) with these request headers; its body follows."""
        if self.closed.is_set():
            raise StreamGone("the connection is closed")
        stream_id = self._h2.get_next_available_stream_id()
        stream = self._streams[stream_id] = _Stream()
        self._h2.send_headers(stream_id, headers)
        self._flush()
        return stream_id, stream

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool = False) -> None:
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as e:
            raise StreamGone(str(e)) from None
        self._flush()

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send within the peer's flow-control windows, waiting for them to open."""
        view = memoryview(data)
        while True:
            await self._writable.wait()
            if self.closed.is_set():
                raise StreamGone("the connection is closed")
            try:
                window = self._h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError as e:
                raise StreamGone(str(e)) from None
            size = min(window, self._h2.max_outbound_frame_size, len(view))
            if view and size == 0:
                self._window.clear()
                await self._window.wait()
                continue
            last = size == len(view)
            try:
                self._h2.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and last)
            except h2.exceptions.StreamClosedError as e:
                raise StreamGone(str(e)) from None
            self._flush()
            view = view[size:]
            if last:
                return

    def ack(self, stream_id: int, size: int) -> None:
        """`size` bytes of this stream were passed on: the sender may send as many again."""
        self._h2.acknowledge_received_data(size, stream_id)
        self._flush()

    def reset(
        self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.CANCEL
    ) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.reset:
            stream.fail()
        try:
            self._h2.reset_stream(stream_id, code)
            self._flush()
        except h2.exceptions.StreamClosedError:
            pass  # already closed both ways: nothing to reset

    def forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        # Data that arrived and was never passed on still counts against the connection.
        while stream is not None and not stream.inbox.empty():
            item = stream.inbox.get_nowait()
            if isinstance(item, tuple):
                self._h2.acknowledge_received_data(item[1], stream_id)
        self._flush()


async def _pump(source: Peer, sid: int, stream: _Stream, sink: Peer, sink_sid: int) -> None:
    """One direction of a stream: data, then trailers or the end, or a reset."""
    while True:
        item = await stream.inbox.get()
        if item is _RESET:
            sink.reset(sink_sid)
            return
        if item is _END:
            if stream.trailers is not None:
                sink.send_headers(sink_sid, _end_to_end(stream.trailers), end_stream=True)
            else:
                await sink.send_data(sink_sid, b"", end_stream=True)
            return
        data, size = item  # type: ignore[misc]
        await sink.send_data(sink_sid, data)
        source.ack(sid, size)


def _end_to_end(headers: Headers) -> Headers:
    # `te: trailers` is the one connection header HTTP/2 allows, and gRPC requires it.
    return [
        (k, v)
        for k, v in headers
        if k.decode("latin-1").lower() not in HOP_BY_HOP or (k.lower(), v) == (b"te", b"trailers")
    ]


async def _answer(peer: Peer, sid: int, status: int, text: str) -> None:
    body = text.encode() + b"\n"
    head = [(b":status", str(status).encode()), (b"content-type", b"text/plain")]
    peer.send_headers(sid, [*head, (b"content-length", str(len(body)).encode())])
    await peer.send_data(sid, body, end_stream=True)


Wake = Callable[[ObjectKey], Awaitable[Lease]]


class H2cPort:
    """The h2c listener. `wake(key)` is the activator's `admit`: the queue, then where to
    send the request (or `Refused`); `deadline(key)` bounds the wake plus the wait for the response head."""

    def __init__(
        self,
        wake: Wake,
        deadline: Callable[[ObjectKey], float | None],
        on_demand: Callable[[ObjectKey], None] | None = None,
    ) -> None:
        self._wake = wake
        self._deadline = deadline
        self._on_demand = on_demand
        self._server: asyncio.Server | None = None
        self._downstream: set[Peer] = set()
        self._pool: dict[int, Peer] = {}
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port)
        return self._server.sockets[0].getsockname()[1]

    def _accept(self) -> Peer:
        self._downstream = {p for p in self._downstream if not p.closed.is_set()}
        peer = Peer(client_side=False, on_request=self._on_request)
        self._downstream.add(peer)
        return peer

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in [*self._downstream, *self._pool.values()]:
            peer.close()

    def _on_request(self, peer: Peer, sid: int, stream: _Stream) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(peer, sid, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upstream(self, port: int) -> Peer:
        async with self._connecting:  # one connection per revision process, shared
            peer = self._pool.get(port)
            if peer is None or peer.closed.is_set():
                loop = asyncio.get_running_loop()
                _, peer = await loop.create_connection(
                    lambda: Peer(client_side=True), "127.0.0.1", port
                )
                self._pool[port] = peer
            return peer

    async def _relay(self, down: Peer, sid: int, stream: _Stream) -> None:
        try:
            with contextlib.ExitStack() as held:  # a throttled request's slot, until relayed
                await self._relay_stream(down, sid, stream, held)
        except StreamGone as e:
            log.debug("activator: h2c stream %d ended early: %s", sid, e)
            down.reset(sid)
        except (OSError, h2.exceptions.ProtocolError) as e:
            log.warning("activator: h2c stream %d failed: %s", sid, e)
            down.reset(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            down.forget(sid)

    async def _relay_stream(
        self, down: Peer, sid: int, stream: _Stream, held: contextlib.ExitStack
    ) -> None:
        headers = stream.head.result()
        found = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        if found.get(PROBE_HEADER) == PROBE_VALUE:
            return await _answer(down, sid, 200, PROBE_VALUE)
        key = revision_key(found)
        if key is None:
            return await _answer(down, sid, 400, "no Knative-Serving-Revision header")
        if self._on_demand is not None:
            self._on_demand(key)
        deadline = self._deadline(key)
        try:
            async with asyncio.timeout(deadline):
                lease = await self._wake(key)
                held.callback(lease.release)
                up = await self._upstream(lease.port)
                usid, ustream = up.open(self._forwarded(headers, down.peer_address))
                stream.on_reset = lambda: up.reset(usid)
                sending = asyncio.create_task(_pump(down, sid, stream, up, usid))
                try:
                    head = await ustream.head
                except BaseException:
                    sending.cancel()
                    up.reset(usid)
                    up.forget(usid)
                    raise
        except TimeoutError:
            text = f"revision {key} did not answer within its timeoutSeconds ({deadline:g} s)"
            return await _answer(down, sid, 504, text)
        except Refused as e:
            return await _answer(down, sid, e.status, e.text)
        except (OSError, StreamGone) as e:
            log.warning("activator: h2c request for %s failed: %s", key, e)
            return await _answer(down, sid, 502, f"revision {key} failed: {e}")
        try:
            down.send_headers(sid, _end_to_end(head), end_stream=ustream.ended)
            if not ustream.ended:
                await _pump(up, usid, ustream, down, sid)
            await sending
        except BaseException:
            sending.cancel()
            up.reset(usid)
            raise
        finally:
            up.forget(usid)

    @staticmethod
    def _forwarded(headers: Headers, peer: str | None) -> Headers:
        chain = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
        out = [(k, v) for k, v in _end_to_end(headers) if k.lower() != b"x-forwarded-for"]
        if peer:
            chain.append(peer.encode())
        if chain:
            out.append((b"x-forwarded-for", b", ".join(chain)))
        return out
