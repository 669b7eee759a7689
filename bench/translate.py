"""Control-plane CPU for one Route edit: object change → bytes ready for the wire.

In process, no Envoy: loads N Routes (2 revisions each), then times edits of
one Route's split through the resolver, the translator, the cache, and the
encoding of the SotW and Delta responses a connected gateway would be sent.

    python -m bench.translate                 # 50 and 5,000 routes (100 and 10,000 revisions)
    python -m bench.translate --routes 5000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from knative_xds.app import ControlPlane
from knative_xds.model import ObjectKey, RawObject
from knative_xds.resources import ROUTE
from knative_xds.server.plan import plan_delta, plan_sotw
from knative_xds.server.stream import Stream
from knative_xds.server.subscription import Subscription

from .common import print_table, route_objects, summary


def raw(obj: dict) -> tuple[tuple[str, ObjectKey], RawObject]:
    raw = RawObject.from_dict(obj, "bench")
    return raw.ident, raw


def load(routes: int) -> ControlPlane:
    plane = ControlPlane()
    changes = dict(
        raw(o)
        for i in range(routes)
        for o in route_objects(i, blue=8001, green=8002, to_green=False)
    )
    plane.pipeline.apply(changes)
    return plane


def measure(routes: int, edits: int) -> dict:
    started = time.perf_counter()
    plane = load(routes)
    load_s = time.perf_counter() - started
    # A gateway that holds everything: its subscriptions record what it was sent.
    snapshot = plane.cache.current()
    subs = {}
    for type_url, items in snapshot.resources.items():
        sub = Subscription(type_url, wildcard=True)
        sub.record_sent("0", dict(items), version="v0", full_state=True)
        sub.answer("0", None)
        subs[type_url] = sub
    encoder = Stream(cache=plane.cache, delta=False, peer="bench")
    times, sizes = [], []
    planned = snapshot.counters[ROUTE]
    for n in range(edits):
        i = n % routes
        obj = route_objects(i, blue=8001, green=8002, to_green=n // routes % 2 == 0)[0]
        t0 = time.perf_counter()
        plane.pipeline.apply(dict([raw(obj)]))
        snap = plane.cache.current()
        only = plane.cache.changed_since(ROUTE, planned)
        out = plan_sotw(ROUTE, snap, subs, only)
        body = encoder._encode(out, str(n), snap)
        plan_delta(ROUTE, snap, subs, only)
        planned = snap.counters[ROUTE]
        times.append((time.perf_counter() - t0) * 1000)
        sizes.append(len(body))
        subs[ROUTE].record_sent(str(n + 1), out.resources, version=out.version, full_state=False)
        subs[ROUTE].answer(str(n + 1), None)
    return {
        "routes": routes,
        "revisions": 2 * routes,
        "load_s": round(load_s, 2),
        "edit_cpu": summary(times),
        "rds_response_bytes": max(sizes),
        "stats": dataclasses.asdict(plane.translator.stats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, nargs="*", default=[50, 5000])
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(r, args.edits) for r in args.routes]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print_table(
            f"translate: {r['routes']} routes / {r['revisions']} revisions, {args.edits} edits",
            {
                "one edit → bytes, p50": f"{r['edit_cpu']['p50_ms']} ms",
                "one edit → bytes, p99": f"{r['edit_cpu']['p99_ms']} ms",
                "RDS response size": f"{r['rds_response_bytes']} bytes",
                "first load": f"{r['load_s']} s",
            },
        )


if __name__ == "__main__":
    main()
