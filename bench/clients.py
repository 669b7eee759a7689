"""Lightweight ADS clients for the benchmarks: many SotW streams from one process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from knative_xds.resources import PUSH_ORDER, ROUTE

STREAMS_PER_CHANNEL = 10
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


class Client:
    """One gateway's ADS stream, reduced to what the benchmarks need."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.queue: asyncio.Queue = asyncio.Queue()
        self.route_versions: list[tuple[float, str]] = []
        self.ready = asyncio.Event()

    async def _requests(self):
        first = True
        while True:
            req = await self.queue.get()
            if first:
                req.node.CopyFrom(base_pb2.Node(id=self.node))
                first = False
            yield req

    async def run(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        # Wildcard on every type: the server sends the same bytes Envoy would get by
        # name, and the client needs to decode nothing to know what to ask for.
        for t in PUSH_ORDER:
            self.queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=t))
        async for resp in stub.StreamAggregatedResources(self._requests()):
            self.queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )
            if resp.type_url == ROUTE:
                self.route_versions.append((time.perf_counter(), resp.version_info))
                self.on_route(resp)
                self.ready.set()

    def on_route(self, resp) -> None:
        """A hook for subclasses that look inside route tables."""


@contextlib.asynccontextmanager
async def connected(port: int, clients: Sequence[Client], timeout: float) -> AsyncIterator[float]:
    """Open every client's stream; yield (the seconds it took) once all have route tables."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        for _ in range(-(-len(clients) // STREAMS_PER_CHANNEL))
    ]
    try:
        async with asyncio.TaskGroup() as tasks:
            runs = [
                tasks.create_task(
                    c.run(
                        ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                            channels[i // STREAMS_PER_CHANNEL]
                        )
                    )
                )
                for i, c in enumerate(clients)
            ]
            started = time.perf_counter()
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(c.ready.wait() for c in clients))
            yield time.perf_counter() - started
            for run in runs:
                run.cancel()
    finally:
        for channel in channels:
            await channel.close()
