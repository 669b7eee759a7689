"""Cold start and memory at scale: N Routes (2 revisions each), the real Envoy, M gateways.

Figures: process start → Envoy holding every cluster warm, and → Envoy serving
every Route (Envoy starts alongside, as a gateway already up when the control
plane starts); control-plane resident memory once the real Envoy and M more
lightweight ADS streams hold the whole configuration.

    python -m bench.scale --routes 5000 --gateways 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from .clients import CHANNEL_OPTIONS, Client, envoy_names
from .common import loop_stall_max_ms, print_table, stack, wait_all_warm, wait_served
from .spread import streams


async def scale(routes: int, gateways: int) -> dict:
    with stack(routes) as st:
        cold = wait_all_warm(st, 2 * routes, timeout=900) - st.started
        # One SotW response carries every route table: the last Route's host answering
        # means Envoy applied them all.
        served = wait_served(st.external, st.host(routes - 1), "blue", timeout=900) - st.started
        rss_one = st.rss_kb(0)
        names = envoy_names(routes)
        clients = [Client(f"gw-{i}", names) for i in range(gateways)]
        since = time.time()
        # Through relays, PER_ADDRESS streams per source address: the server takes at most
        # 64 from one address, and the real Envoy already holds one from 127.0.0.1.
        async with streams(st.xds, clients, timeout=600, options=CHANNEL_OPTIONS) as connect:
            await asyncio.sleep(1.0)
            rss_all = st.rss_kb(0)
        stall = loop_stall_max_ms(st, since)
    return {
        "routes": routes,
        "revisions": 2 * routes,
        "gateways": gateways + 1,
        "cold_start_to_all_warm_s": round(cold, 2),
        "cold_start_to_every_route_served_s": round(served, 2),
        "control_plane_load_s": round(st.loaded - st.started, 2),
        "rss_mb_one_envoy": round(rss_one / 1024, 1),
        "rss_mb_all_gateways": round(rss_all / 1024, 1),
        "gateways_connected_in_s": round(connect, 2),
        # knative-xds's loop, from the extra gateways connecting to the end of the run.
        "loop_stall_max_ms": stall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument(
        "--gateways", type=int, default=100, help="lightweight ADS streams besides the real Envoy"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(scale(args.routes, args.gateways))
    if args.json:
        print(json.dumps(r))
        return
    print_table(
        f"scale: {r['routes']} routes / {r['revisions']} revisions",
        {
            "process start → every cluster warm in Envoy": f"{r['cold_start_to_all_warm_s']} s",
            "process start → every Route served by Envoy": f"{r['cold_start_to_every_route_served_s']} s",
            "  of which knative-xds loading its files": f"{r['control_plane_load_s']} s",
            "control plane RSS, 1 Envoy": f"{r['rss_mb_one_envoy']} MB",
            f"control plane RSS, {r['gateways']} gateways": f"{r['rss_mb_all_gateways']} MB",
            "extra gateways connected in": f"{r['gateways_connected_in_s']} s",
            "longest loop stall while they connected": f"{r['loop_stall_max_ms']} ms",
        },
    )


if __name__ == "__main__":
    main()
