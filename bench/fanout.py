"""One Route edit reaching N connected ADS streams: time until every stream has it.

knative-xds runs as its own process on a folder of N Routes; this process opens
N lightweight SotW ADS streams (wildcard on every type, ACKing every response),
edits one Route's file, and times until every stream has received the route
table carrying the edit.

    python -m bench.fanout --gateways 1000 --routes 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import tracemalloc

from knative_xds import synth as s

from .clients import Client, connected, envoy_names
from .common import print_table, route_name, route_objects, stack, summary, write_atomically


async def fanout(gateways: int, routes: int) -> dict:
    with stack(routes, envoy=False) as st:
        names = envoy_names(routes)
        clients = [Client(f"gw-{i}", names) for i in range(gateways)]
        async with connected(st.xds, clients, timeout=120) as connected_s:
            await asyncio.sleep(0.5)
            blue, green = st.ports()
            text = s.dump(route_objects(0, blue=blue, green=green, to_green=True))
            seen = {id(c): len(c.route_versions) for c in clients}
            t0 = time.perf_counter()
            write_atomically(st.config / f"{route_name(0)}.yaml", text)
            async with asyncio.timeout(60):
                while not all(len(c.route_versions) > seen[id(c)] for c in clients):
                    await asyncio.sleep(0.005)
            arrivals = [(c.route_versions[seen[id(c)]][0] - t0) * 1000 for c in clients]
            rss = st.rss_kb(0)
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
