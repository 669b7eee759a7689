"""Route edit → the real Envoy serving the new split, with N routes loaded.

Each edit rewrites one Route's file in place (atomically) to move all its
traffic from the blue revision to the green one (or back), then polls through
Envoy until that host answers with the new color. The figure is the time from
the write to the first request served by the new split.

    python -m bench.convergence --routes 100 --edits 100
    python -m bench.convergence --routes 5000 --edits 100 --json
    python -m bench.convergence --routes 100 --edits 100 --baseline --json

With --baseline, the same run then times the same edits applied by an Envoy that
reads the same resources from a watched file, with no control plane
(bench/file_baseline.py), and reports `baseline_p50_ms` and `ratio`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from knative_xds import synth as s

from . import file_baseline
from .common import (
    print_table,
    route_name,
    route_objects,
    stack,
    summary,
    wait_all_warm,
    wait_served,
    write_atomically,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, default=100, help="Routes loaded (2 revisions each)")
    parser.add_argument("--edits", type=int, default=100, help="edits to time")
    parser.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline", action="store_true", help="also time the edits from a watched file"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with stack(args.routes, delta=args.delta) as st:
        cold = wait_all_warm(st, 2 * args.routes, timeout=600) - st.started
        wait_served(st.external, st.host(args.routes - 1), "blue", timeout=60)
        ports = st.ports()
        on_green: set[int] = set()
        times: list[float] = []
        for _ in range(args.edits):
            i = rng.randrange(args.routes)
            to_green = i not in on_green
            text = s.dump(route_objects(i, blue=ports[0], green=ports[1], to_green=to_green))
            t0 = time.perf_counter()
            write_atomically(st.config / f"{route_name(i)}.yaml", text)
            t1 = wait_served(st.external, st.host(i), "green" if to_green else "blue", timeout=30)
            times.append((t1 - t0) * 1000)
            on_green.symmetric_difference_update({i})
            time.sleep(0.02)  # let the edit settle; edits are timed one at a time
        result = {
            "routes": args.routes,
            "revisions": 2 * args.routes,
            "protocol": "delta" if args.delta else "sotw",
            "edit_to_served": summary(times),
            "first_load_to_served_s": round(cold, 2),
            "control_plane_rss_mb": round(st.rss_kb(0) / 1024, 1),
        }
    result["p50_ms"] = result["edit_to_served"]["p50_ms"]
    if args.baseline:
        # After the control plane's run, so the two never share the cores.
        with tempfile.TemporaryDirectory(prefix="bench-file-baseline-") as tmp:
            base = summary(file_baseline.run(args.routes, args.edits, rng, Path(tmp)))
        result["baseline"] = base
        result["baseline_p50_ms"] = base["p50_ms"]
        result["ratio"] = round(result["p50_ms"] / base["p50_ms"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(
            f"convergence: {args.routes} routes, {args.edits} edits ({result['protocol']})",
            {
                "edit → served p50": f"{result['edit_to_served']['p50_ms']} ms",
                "edit → served p99": f"{result['edit_to_served']['p99_ms']} ms",
                "edit → served max": f"{result['edit_to_served']['max_ms']} ms",
                "start → every cluster warm": f"{result['first_load_to_served_s']} s",
                "control plane RSS": f"{result['control_plane_rss_mb']} MB",
                **(
                    {
                        "file baseline p50": f"{result['baseline_p50_ms']} ms",
                        "ratio (p50 / baseline p50)": result["ratio"],
                    }
                    if args.baseline
                    else {}
                ),
            },
        )


if __name__ == "__main__":
    main()
