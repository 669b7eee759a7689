"""A reconnect storm: N gateways connect at once to a control plane holding M revisions.

knative-xds runs as its own process on a folder of M/2 Routes (2 revisions each)
and has loaded it. The gateways are raw gRPC ADS clients that subscribe as Envoy
does (listeners, clusters, scopes and secrets as a wildcard; route tables and
endpoints by name; ACKing every response), each on its own connection, spread
over `--processes` client processes so that their CPU time is measured apart from
the server's. On a signal they all open their streams at once; a gateway holds the
whole snapshot once, for every type, it has been sent as many resources as
knative-xds's snapshot has (its /debug/status). Clients count resources in the
wire bytes without decoding them.

Figures: time from the signal to every gateway holding the snapshot (and the
median gateway); the server's CPU seconds over that time (/proc) against the
clients' (getrusage in each client process, relays included, see bench/spread.py);
the longest stall of the server's event loop meanwhile.

    python -m bench.reconnect --gateways 100 --revisions 10000 [--delta] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from knative_xds.resources import PUSH_ORDER, short

from .clients import CHANNEL_OPTIONS, SOTW_METHOD, envoy_names, requests_from
from .common import cpu_seconds, loop_stall_max_ms, percentile, print_table, stack
from .spread import streams

DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
# One connection per gateway, as each Envoy has its own: gRPC would otherwise share
# one connection between channels to the same address.
OPTIONS = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
# Field numbers, the same in DiscoveryResponse and DeltaDiscoveryResponse.
_RESOURCES, _TYPE_URL, _NONCE, _VERSION = 2, 4, 5, 1
_REMOVED = 6  # DeltaDiscoveryResponse.removed_resources
# gRPC's details of a call cancelled by its own client (grpc.aio).
LOCAL_CANCEL = "Locally cancelled by application!"


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def read_counts(data: bytes) -> tuple[str, str, str, int, int]:
    """type URL, version, nonce, resources and removed names of a (Delta)DiscoveryResponse."""
    text: dict[int, str] = {}
    counts = {_RESOURCES: 0, _REMOVED: 0}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if number in (_TYPE_URL, _NONCE, _VERSION):
                text[number] = data[i : i + length].decode()
            elif number in counts:
                counts[number] += 1
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire} for field {number}")
    return (
        text.get(_TYPE_URL, ""),
        text.get(_VERSION, ""),
        text.get(_NONCE, ""),
        counts[_RESOURCES],
        counts[_REMOVED],
    )


class Gateway:
    """One gateway's ADS stream: `ready` once it holds `expected` resources of each type."""

    def __init__(
        self,
        node: str,
        names: Mapping[str, Sequence[str]],
        expected: Mapping[str, int],
        *,
        delta: bool,
    ) -> None:
        self.node, self.names, self.expected, self.delta = node, names, expected, delta
        self.held: dict[str, int] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ready = asyncio.Event()
        self.synced_at: float | None = None  # wall clock, comparable across processes

    async def run(self, channel: grpc.aio.Channel) -> None:
        request = (
            discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        )
        for t in PUSH_ORDER:  # wildcard on the types not named, as Envoy
            names = list(self.names.get(t, ()))
            if self.delta:
                self.queue.put_nowait(request(type_url=t, resource_names_subscribe=names))
            else:
                self.queue.put_nowait(request(type_url=t, resource_names=names))
        call = channel.stream_stream(
            DELTA_METHOD if self.delta else SOTW_METHOD,
            request_serializer=request.SerializeToString,
            response_deserializer=read_counts,
        )
        try:
            await self._receive(call(requests_from(self.queue, self.node)), request)
        except grpc.aio.AioRpcError as e:
            # Our own cancel (the run is over) can surface as the call's CANCELLED status
            # rather than as the task's cancellation, when it lands while gRPC finishes
            # the call: that is a clean end. A CANCELLED the server sent is not.
            if e.code() is grpc.StatusCode.CANCELLED and e.details() == LOCAL_CANCEL:
                raise asyncio.CancelledError from e
            raise

    async def _receive(self, responses, request) -> None:
        async for type_url, version, nonce, added, removed in responses:
            if self.delta:
                self.queue.put_nowait(request(type_url=type_url, response_nonce=nonce))
                # No edits during the run: each name arrives once.
                self.held[type_url] = self.held.get(type_url, 0) + added - removed
            else:
                self.queue.put_nowait(
                    request(
                        type_url=type_url,
                        version_info=version,
                        response_nonce=nonce,
                        resource_names=list(self.names.get(type_url, ())),
                    )
                )
                self.held[type_url] = added  # a SotW response holds all of the type
            if not self.ready.is_set() and all(
                self.held.get(t, 0) >= n for t, n in self.expected.items()
            ):
                self.synced_at = time.time()
                self.ready.set()


# -- a client process -----------------------------------------------------------------


async def _client_process(job: dict) -> None:
    """Wait for "go", run the job's gateways until all hold the snapshot, report, wait for
    "stop", end every stream cleanly."""
    names = envoy_names(job["routes"])
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
        print(json.dumps({"synced": [g.synced_at for g in gateways], "cpu_s": cpu}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    print(json.dumps({"closed": True}), flush=True)


# -- the benchmark --------------------------------------------------------------------


def _expected(status: dict, names: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Resources per type a gateway must hold: the snapshot's, or the names it asks for."""
    counts = {t: len(names[t]) if t in names else status["resources"][short(t)] for t in PUSH_ORDER}
    return {t: n for t, n in counts.items() if n}


def _read_line(proc: subprocess.Popen, what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a client process exited before {what} (exit code {proc.wait()})")
    return line


def reconnect(
    gateways: int, revisions: int, *, delta: bool, processes: int, timeout: float
) -> dict:
    routes = max(1, revisions // 2)
    with stack(routes, envoy=False) as st:
        expected = _expected(st.status(), envoy_names(routes))
        processes = max(1, min(processes, gateways))
        share = -(-gateways // processes)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.reconnect", "--client-process"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        try:
            for k, proc in enumerate(procs):
                job = {
                    "port": st.xds,
                    "routes": routes,
                    "delta": delta,
                    "expected": expected,
                    "timeout": timeout,
                    "nodes": [f"gw-{i}" for i in range(k * share, min(gateways, (k + 1) * share))],
                    "first": k * 1000,  # source addresses apart per process
                }
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
            for proc in procs:
                _read_line(proc, "getting ready")
            server_before = cpu_seconds(st.procs[0].pid)
            go = time.time()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            reports = [json.loads(_read_line(proc, "holding the snapshot")) for proc in procs]
            server_cpu = cpu_seconds(st.procs[0].pid) - server_before
            # Every gateway connected and holding the snapshot: the server's resident size.
            server_rss_mb = st.rss_kb() / 1024
            synced = [t - go for r in reports for t in r["synced"]]
            stall = loop_stall_max_ms(st, go, go + max(synced))
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            for proc in procs:
                _read_line(proc, "closing its streams")
                if proc.wait(timeout=60) != 0:
                    raise RuntimeError(f"a client process ended with exit code {proc.returncode}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {
        "gateways": gateways,
        "revisions": 2 * routes,
        "protocol": "delta" if delta else "sotw",
        "client_processes": processes,
        "all_synced_s": round(max(synced), 3),
        "median_synced_s": round(percentile(synced, 50), 3),
        "first_synced_s": round(min(synced), 3),
        "server_cpu_s": round(server_cpu, 2),
        "clients_cpu_s": round(sum(r["cpu_s"] for r in reports), 2),
        "loop_stall_max_ms": stall,
        "server_rss_mb": round(server_rss_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--revisions", type=int, default=10000)
    parser.add_argument("--delta", action="store_true", help="Delta ADS instead of SotW")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for sync")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        asyncio.run(_client_process(json.loads(sys.stdin.readline())))
        return
    r = reconnect(
        args.gateways,
        args.revisions,
        delta=args.delta,
        processes=args.processes,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(r))
        return
    print_table(
        f"reconnect: {r['gateways']} gateways ({r['protocol']}) at once, {r['revisions']} revisions",
        {
            "signal → every gateway holds the snapshot": f"{r['all_synced_s']} s",
            "signal → median gateway": f"{r['median_synced_s']} s",
            "server CPU meanwhile": f"{r['server_cpu_s']} s",
            f"clients' CPU ({r['client_processes']} processes)": f"{r['clients_cpu_s']} s",
            "longest server loop stall": f"{r['loop_stall_max_ms']} ms",
            "server RSS, every gateway connected": f"{r['server_rss_mb']} MB",
        },
    )


if __name__ == "__main__":
    main()
