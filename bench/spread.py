"""Many gateways from one machine: relays that give each group of streams its own address.

knative-xds accepts at most 64 ADS streams from one IP address (server/limits.py),
as a fleet's gateways each have their own. A benchmark that opens hundreds of
streams from 127.0.0.1 would be refused from the 65th on, so its clients connect
through relays instead: each group of `PER_ADDRESS` streams connects to its own
relay, which opens their connections to knative-xds from a loopback source address
of its own (Linux routes all of 127.0.0.0/8 to lo).

The relays run on the clients' event loop: the bytes they copy are CPU time of the
benchmark's clients, not of the server, and they add one loopback hop to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc

# Streams per source address: under the server's cap of 64 per IP address.
PER_ADDRESS = 60


def source_address(n: int) -> str:
    """The n-th loopback address from 127.1.0.0 on (never 127.0.0.1, where Envoy is)."""
    n += 1 << 16
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class _Side(asyncio.Protocol):
    """One connection of a relayed pair: what it receives, the other side writes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write_eof()
        return True  # keep our sending half open until the other side finishes

    # Back-pressure: while our outgoing buffer is full, stop reading the other side.
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class _Client(_Side):
    """The client's connection: read nothing until the upstream one is open."""

    def __init__(self, port: int, source: str, pending: set[asyncio.Task]) -> None:
        super().__init__()
        self._port, self._source, self._pending = port, source, pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(self) -> None:
        assert self.transport is not None
        up = _Side()
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: up, "127.0.0.1", self._port, local_addr=(self._source, 0)
            )
        except OSError:
            self.transport.close()
            return
        up.other, self.other = self, up
        self.transport.resume_reading()


@contextlib.asynccontextmanager
async def relays(port: int, groups: int, *, first: int = 0) -> AsyncIterator[list[int]]:
    """`groups` relays to 127.0.0.1:`port`, yielded as their ports; what connects to the
    g-th reaches knative-xds from `source_address(first + g)`."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    clients: list[_Client] = []

    def accept(source: str) -> _Client:
        clients.append(_Client(port, source, pending))
        return clients[-1]

    servers = []
    try:
        for g in range(groups):
            source = source_address(first + g)
            servers.append(await loop.create_server(lambda s=source: accept(s), "127.0.0.1", 0))
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for server in servers:
            server.close()
        for task in list(pending):
            task.cancel()
        for side in clients:
            for s in (side, side.other):
                if s is not None and s.transport is not None:
                    s.transport.close()
        for server in servers:
            await server.wait_closed()


class Gateway(Protocol):
    """What `streams` runs: one ADS stream on a channel, `ready` once it holds its state."""

    ready: asyncio.Event

    async def run(self, channel: grpc.aio.Channel) -> None: ...


@contextlib.asynccontextmanager
async def streams(
    port: int,
    gateways: Sequence[Gateway],
    *,
    timeout: float,
    options: Sequence[tuple[str, object]] = (),
    first_address: int = 0,
) -> AsyncIterator[float]:
    """Run every gateway's stream, each group of `PER_ADDRESS` from its own address;
    yield (the seconds it took) once all are ready; then end them all cleanly.

    A stream that ends or fails before all are ready raises here, naming it and its
    status. At the end every stream's task is cancelled and awaited before any channel
    is closed, so each ends as cancelled by us; a stream that ended any other way (a
    status from the server) is reported by name rather than as an ExceptionGroup.
    """
    groups = -(-len(gateways) // PER_ADDRESS)
    async with relays(port, groups, first=first_address) as ports:
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{p}", options=list(options)) for p in ports
        ]
        tasks = [
            asyncio.create_task(g.run(channels[i // PER_ADDRESS]), name=f"stream {i}")
            for i, g in enumerate(gateways)
        ]
        started = time.perf_counter()
        all_ready = asyncio.ensure_future(asyncio.gather(*(g.ready.wait() for g in gateways)))
        try:
            async with asyncio.timeout(timeout):
                while not all_ready.done():
                    done, _ = await asyncio.wait(
                        [all_ready, *tasks], return_when=asyncio.FIRST_COMPLETED
                    )
                    ended = [t for t in done if t is not all_ready]
                    if ended:
                        raise RuntimeError(
                            f"{ended[0].get_name()} ended before all were ready: "
                            f"{_outcome(ended[0])}"
                        )
            yield time.perf_counter() - started
        finally:
            all_ready.cancel()
            await close(tasks, channels)


async def close(tasks: Sequence[asyncio.Task], channels: Sequence[grpc.aio.Channel]) -> None:
    """End the streams' tasks, then their channels; raise if a stream had failed."""
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    failed = [
        f"{t.get_name()}: {o!r}"
        for t, o in zip(tasks, outcomes, strict=True)
        if not isinstance(o, asyncio.CancelledError | type(None))
    ]
    if failed:
        raise RuntimeError(f"{len(failed)} stream(s) failed: " + "; ".join(failed[:3]))


def _outcome(task: asyncio.Task) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error) if error else "the server closed it"
