"""One Route edit reaching N connected ADS streams: time until every stream has it.

knative-xds runs as its own process on a folder of N Routes; this process opens
N lightweight SotW ADS streams (LDS/CDS wildcard, RDS/EDS by name, ACKing every
response), edits one Route's file, and times until every stream has received
the route table carrying the edit.

    python -m bench.fanout --gateways 1000 --routes 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import tracemalloc

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from knative_xds import synth as s
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

from .common import print_table, route_name, route_objects, stack, summary, write_atomically

STREAMS_PER_CHANNEL = 50
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


class Client:
    """One gateway's ADS stream, reduced to what the benchmark needs."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.queue: asyncio.Queue = asyncio.Queue()
        self.route_versions: list[tuple[float, str]] = []
        self.ready = asyncio.Event()

    def requests(self):
        async def gen():
            first = True
            while True:
                req = await self.queue.get()
                if first:
                    req.node.CopyFrom(base_pb2.Node(id=self.node))
                    first = False
                yield req

        return gen()

    async def run(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        # Wildcard on every type: the server sends the same bytes Envoy would get by
        # name, and the client needs to decode nothing to know what to ask for.
        for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            self.queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=t))
        async for resp in stub.StreamAggregatedResources(self.requests()):
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


async def fanout(gateways: int, routes: int) -> dict:
    with stack(routes, envoy=False) as st:
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{st.xds}", options=CHANNEL_OPTIONS)
            for _ in range(-(-gateways // STREAMS_PER_CHANNEL))
        ]
        clients = [Client(f"gw-{i}") for i in range(gateways)]
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
            async with asyncio.timeout(120):
                await asyncio.gather(*(c.ready.wait() for c in clients))
            connected_s = time.perf_counter() - started
            await asyncio.sleep(0.5)
            ports = [int(p) for p in st.ports()]
            text = s.dump(route_objects(0, blue=ports[0], green=ports[1], to_green=True))
            seen = {id(c): len(c.route_versions) for c in clients}
            t0 = time.perf_counter()
            write_atomically(st.config / f"{route_name(0)}.yaml", text)
            async with asyncio.timeout(60):
                while not all(len(c.route_versions) > seen[id(c)] for c in clients):
                    await asyncio.sleep(0.005)
            arrivals = [(c.route_versions[seen[id(c)]][0] - t0) * 1000 for c in clients]
            rss = st.rss_kb(0)
            for r in runs:
                r.cancel()
        for ch in channels:
            await ch.close()
    return {
        "gateways": gateways,
        "routes": routes,
        "connect_all_s": round(connected_s, 2),
        "edit_to_all_received_ms": round(max(arrivals), 1),
        "arrival": summary(arrivals),
        "control_plane_rss_mb": round(rss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tracemalloc.stop()
    result = asyncio.run(fanout(args.gateways, args.routes))
    if args.json:
        print(json.dumps(result))
        return
    print_table(
        f"fanout: one edit, {args.gateways} SotW streams, {args.routes} routes",
        {
            "edit → all streams received": f"{result['edit_to_all_received_ms']} ms",
            "edit → median stream": f"{result['arrival']['p50_ms']} ms",
            "all streams connected in": f"{result['connect_all_s']} s",
            "control plane RSS": f"{result['control_plane_rss_mb']} MB",
        },
    )


if __name__ == "__main__":
    main()
