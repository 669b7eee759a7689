"""The gateways of bench.replicas: raw SotW ADS clients that also notice edits.

Each subscribes as Envoy does (as bench/reconnect.py's: listeners, clusters and
scopes as a wildcard, route tables and endpoints by name, ACKing every response)
and counts resources in the wire bytes without decoding them. Once synced, it
looks in every route-table response for the markers the benchmark's edits write
into a header (`kx-edit-NNNNNN`); a client process prints one line per edit once
every one of its gateways has been sent it.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from knative_xds.model import ObjectKey
from knative_xds.model.from_kingress import service_cluster
from knative_xds.resources import ENDPOINT, FULL_STATE_TYPES, PUSH_ORDER, ROUTE
from knative_xds.translate.names import Listener, route_table_name

from .clients import SOTW_METHOD, requests_from
from .ingress_ready import EDIT_HEADER, NS, kingress
from .reconnect import DELTA_METHOD, OPTIONS, read_counts
from .spread import streams

MARKER = re.compile(rb"kx-edit-(\d{6})")


def marker(edit: int) -> str:
    return f"kx-edit-{edit:06d}"


def edited_kingress(i: int, edit: int) -> dict:
    """KIngress i with the edit's marker in the header its path appends."""
    obj = kingress(i, 0)
    obj["spec"]["rules"][0]["http"]["paths"][0]["appendHeaders"][EDIT_HEADER] = marker(edit)
    return obj


def gateway_names(ingresses: int) -> dict[str, list[str]]:
    """What an Envoy asks for by name: each KIngress's route tables and its cluster's endpoints."""
    keys = [ObjectKey(NS, f"k{i:05d}") for i in range(ingresses)]
    return {
        ROUTE: [
            route_table_name(v, k) for k in keys for v in (Listener.EXTERNAL, Listener.INTERNAL)
        ],
        ENDPOINT: [service_cluster(k, 80) for k in keys],
    }


# -- a gateway, and a client process of many ------------------------------------------


def _read(data: bytes) -> tuple[tuple[str, str, str, int, int], bytes]:
    return read_counts(data), data


class Gateway:
    """One gateway's ADS stream (SotW, or Delta): `ready` once it holds `expected` resources
    of each type; once `on_edit` is set, told of every edit marker its route tables bring."""

    def __init__(
        self,
        node: str,
        names: Mapping[str, Sequence[str]],
        expected: Mapping[str, int],
        *,
        delta: bool = False,
    ) -> None:
        self.node, self.names, self.expected, self.delta = node, names, expected, delta
        self.held: dict[str, int] = {}
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.synced_at: float | None = None  # wall clock, comparable across processes
        self.on_edit: Callable[[int, float], None] | None = None
        self._seen: set[int] = set()

    def _request(self, type_url: str, version: str = "", nonce: str = "") -> Message:
        names = list(self.names.get(type_url, ()))
        if self.delta:
            # Names once, on the first request; an ACK is its nonce alone.
            subscribe = [] if nonce else names
            return discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, resource_names_subscribe=subscribe
            )
        # SotW: every request, ACKs included, carries the whole list of names, as Envoy's.
        return discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=names
        )

    async def run(self, channel: grpc.aio.Channel) -> None:
        for t in PUSH_ORDER:  # wildcard on the types not named, as Envoy
            self.queue.put_nowait(self._request(t))
        request = (
            discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        )
        call = channel.stream_stream(
            DELTA_METHOD if self.delta else SOTW_METHOD,
            request_serializer=request.SerializeToString,
            response_deserializer=_read,
        )
        async for (type_url, version, nonce, added, removed), raw in call(
            requests_from(self.queue, self.node)
        ):
            self.queue.put_nowait(self._request(type_url, version, nonce))
            # SotW LDS, CDS and SRDS responses hold the whole type; everything else comes
            # as it changes, and before the edits each name comes once.
            # (Field 6 is removed_resources in a Delta response, control_plane in SotW's.)
            if self.delta:
                self.held[type_url] = self.held.get(type_url, 0) + added - removed
            elif type_url in FULL_STATE_TYPES:
                self.held[type_url] = added
            else:
                self.held[type_url] = self.held.get(type_url, 0) + added
            if not self.ready.is_set() and all(
                self.held.get(t, 0) >= n for t, n in self.expected.items()
            ):
                self.synced_at = time.time()
                self.ready.set()
            if self.on_edit is not None and type_url == ROUTE:
                self._edits(raw)

    def _edits(self, raw: bytes) -> None:
        now = time.time()
        for found in MARKER.findall(raw):
            edit = int(found)
            if edit and edit not in self._seen:
                self._seen.add(edit)
                assert self.on_edit is not None
                self.on_edit(edit, now)


class _Edits:
    """Per edit, how many of the process's gateways hold it; prints once all do."""

    def __init__(self, gateways: int) -> None:
        self.gateways = gateways
        self.count: dict[int, int] = {}
        self.last: dict[int, float] = {}

    def seen(self, edit: int, at: float) -> None:
        self.count[edit] = self.count.get(edit, 0) + 1
        self.last[edit] = max(at, self.last.get(edit, at))
        if self.count[edit] == self.gateways:
            print(json.dumps({"edit": edit, "at": self.last.pop(edit)}), flush=True)


async def client_process(job: dict) -> None:
    """Wait for "go", run the job's gateways until all hold the snapshot, report; then
    report each edit once all hold it; at "stop" end every stream cleanly."""
    names = gateway_names(job["ingresses"])
    gateways = [Gateway(n, names, job["expected"], delta=job["delta"]) for n in job["nodes"]]
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    before = resource.getrusage(resource.RUSAGE_SELF)
    async with streams(
        job["port"], gateways, timeout=job["timeout"], options=OPTIONS, first_address=job["first"]
    ):
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        edits = _Edits(len(gateways))
        for g in gateways:
            g.on_edit = edits.seen
        print(json.dumps({"synced": [g.synced_at for g in gateways], "cpu_s": cpu}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    print(json.dumps({"closed": True}), flush=True)
