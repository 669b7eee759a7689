"""Lightweight ADS clients for the benchmarks: many SotW streams from one process.

A client reads only the header fields of each response (type URL, version,
nonce) straight from the wire bytes, skipping the resources by their length:
decoding 10,000 clusters per response per stream would make the benchmark's own
process, not the control plane, the bottleneck (and, at 100 streams holding 10,000
revisions, run it out of memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from knative_xds.model import ObjectKey
from knative_xds.model.from_routes import revision_cluster
from knative_xds.resources import ENDPOINT, PUSH_ORDER, ROUTE
from knative_xds.translate.names import Listener, route_table_name

from .common import route_name

STREAMS_PER_CHANNEL = 10
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

# DiscoveryResponse field numbers.
_VERSION_INFO, _TYPE_URL, _NONCE = 1, 4, 5


async def requests_from(queue: asyncio.Queue, node: str) -> AsyncIterator:
    """The requests put on `queue`, the first with this client's node (as Envoy sends)."""
    first = True
    while True:
        req = await queue.get()
        if first:
            req.node.CopyFrom(base_pb2.Node(id=node))
            first = False
        yield req


@dataclass(frozen=True, slots=True)
class Head:
    """A DiscoveryResponse's header fields, and the response's bytes for whoever needs more."""

    version_info: str
    type_url: str
    nonce: str
    raw: bytes

    def decode(self) -> discovery_pb2.DiscoveryResponse:
        return discovery_pb2.DiscoveryResponse.FromString(self.raw)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def read_head(data: bytes) -> Head:
    """The header fields of a serialized DiscoveryResponse; resources are skipped unread."""
    fields: dict[int, str] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if number in (_VERSION_INFO, _TYPE_URL, _NONCE):
                fields[number] = data[i : i + length].decode()
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire} for field {number}")
    return Head(
        fields.get(_VERSION_INFO, ""), fields.get(_TYPE_URL, ""), fields.get(_NONCE, ""), data
    )


def envoy_names(routes: int) -> dict[str, list[str]]:
    """What an Envoy asks for by name, given the benchmark's Routes: its tables and endpoints.

    Envoy subscribes to listeners, clusters and scopes as a wildcard, and to route
    tables and endpoints by name; the server keeps those names per stream, so the
    benchmark clients ask the same way.
    """
    keys = [ObjectKey("default", route_name(i)) for i in range(routes)]
    return {
        ROUTE: [
            route_table_name(v, k) for k in keys for v in (Listener.EXTERNAL, Listener.INTERNAL)
        ],
        ENDPOINT: [
            revision_cluster(ObjectKey(k.namespace, f"{k.name}-{n}"))
            for k in keys
            for n in ("00001", "00002")
        ],
    }


class Client:
    """One gateway's ADS stream, reduced to what the benchmarks need."""

    def __init__(self, node: str, names: Mapping[str, Sequence[str]] | None = None) -> None:
        self.node = node
        self.names = names or {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.route_versions: list[tuple[float, str]] = []
        self.ready = asyncio.Event()

    async def run(self, channel: grpc.aio.Channel) -> None:
        # Wildcard on the types not named (as Envoy does for LDS, CDS and SRDS).
        for t in PUSH_ORDER:
            self.queue.put_nowait(self._request(t))
        call = channel.stream_stream(
            SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=read_head,
        )
        async for head in call(requests_from(self.queue, self.node)):
            self.queue.put_nowait(
                self._request(head.type_url, version=head.version_info, nonce=head.nonce)
            )
            if head.type_url == ROUTE:
                self.route_versions.append((time.perf_counter(), head.version_info))
                self.on_route(head)
                self.ready.set()

    def _request(self, type_url: str, *, version: str = "", nonce: str = ""):
        return discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=self.names.get(type_url, ()),
        )

    def on_route(self, head: Head) -> None:
        """A hook for subclasses that look inside route tables (`head.decode()`)."""


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
                tasks.create_task(c.run(channels[i // STREAMS_PER_CHANNEL]))
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
