"""Cold start and memory at scale: N Routes (2 revisions each), the real Envoy, M gateways.

Figures: process start → Envoy holding every cluster warm, and → Envoy serving
every Route (Envoy starts alongside, as a gateway already up when the control
plane starts); one Route's file edit → Envoy serving it (p50 and p99 over
`--edits` edits, one at a time, as bench.convergence takes them); control-plane
resident memory once the real Envoy and M more lightweight ADS streams hold the
whole configuration.

    python -m bench.scale --routes 5000 --gateways 100
    python -m bench.scale --routes 25000 --gateways 100 --edits 50 --json   # 50,000 revisions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from knative_xds import synth as s

from .clients import CHANNEL_OPTIONS, Client, envoy_names
from .common import (
    Stack,
    loop_stall_max_ms,
    print_table,
    route_name,
    route_objects,
    stack,
    summary,
    wait_all_warm,
    wait_served,
    write_atomically,
)
from .spread import streams


def edits_to_served(st: Stack, routes: int, edits: int) -> dict[str, float]:
    """Move one Route's traffic to the other revision, `edits` times, one at a time: from
    the file write to Envoy answering with the new revision, in ms."""
    rng = random.Random(1)
    blue, green = st.ports()
    on_green: set[int] = set()
    times: list[float] = []
    for _ in range(edits):
        i = rng.randrange(routes)
        to_green = i not in on_green
        text = s.dump(route_objects(i, blue=blue, green=green, to_green=to_green))
        t0 = time.perf_counter()
        write_atomically(st.config / f"{route_name(i)}.yaml", text)
        try:
            t1 = wait_served(st.external, st.host(i), "green" if to_green else "blue", timeout=30)
        except TimeoutError:
            # Said in the figures (fewer edits than asked), not a run without any figure.
            print(f"scale: {st.host(i)} never served its edit; edits stop here", file=sys.stderr)
            break
        times.append((t1 - t0) * 1000)
        on_green.symmetric_difference_update({i})
        time.sleep(0.02)  # each edit settles before the next: they are timed alone
    return summary(times)


async def scale(routes: int, gateways: int, edits: int = 50) -> dict:
    with stack(routes) as st:
        cold = wait_all_warm(st, 2 * routes, timeout=900) - st.started
        # One SotW response carries every route table: the last Route's host answering
        # means Envoy applied them all.
        served = wait_served(st.external, st.host(routes - 1), "blue", timeout=900) - st.started
        edited = edits_to_served(st, routes, edits) if edits else summary([])
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
        "edit_to_served_p50_ms": edited["p50_ms"],
        "edit_to_served_p99_ms": edited["p99_ms"],
        "edits": edited["n"],
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
    parser.add_argument(
        "--edits", type=int, default=50, help="Route edits timed to Envoy serving them (0: none)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(scale(args.routes, args.gateways, args.edits))
    if args.json:
        print(json.dumps(r))
        return
    print_table(
        f"scale: {r['routes']} routes / {r['revisions']} revisions",
        {
            "process start → every cluster warm in Envoy": f"{r['cold_start_to_all_warm_s']} s",
            "process start → every Route served by Envoy": f"{r['cold_start_to_every_route_served_s']} s",
            "  of which knative-xds loading its files": f"{r['control_plane_load_s']} s",
            f"Route edit → Envoy serves, p50 ({r['edits']} edits)": f"{r['edit_to_served_p50_ms']} ms",
            "Route edit → Envoy serves, p99": f"{r['edit_to_served_p99_ms']} ms",
            "control plane RSS, 1 Envoy": f"{r['rss_mb_one_envoy']} MB",
            f"control plane RSS, {r['gateways']} gateways": f"{r['rss_mb_all_gateways']} MB",
            "extra gateways connected in": f"{r['gateways_connected_in_s']} s",
            "longest loop stall while they connected": f"{r['loop_stall_max_ms']} ms",
        },
    )


if __name__ == "__main__":
    main()
