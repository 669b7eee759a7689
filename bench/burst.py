"""A burst of edits: every gateway must end on the final state, with no backlog.

knative-xds runs in this process on a folder of N Routes, with G lightweight
ADS streams. The benchmark rewrites Route files E times within about a second
(random Routes, random splits), then waits until every stream holds exactly
the final snapshot's route tables, comparing per-resource content hashes.

    python -m bench.burst --routes 100 --gateways 100 --edits 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import resource
import tempfile
import time
from pathlib import Path

from knative_xds import synth as s
from knative_xds.app import ControlPlane
from knative_xds.resources import ROUTE, content_hash
from knative_xds.sources.file import FileSource

from .clients import Client, connected, envoy_names
from .common import print_table, route_name, route_objects, write_atomically


class Tracking(Client):
    """A client that remembers the content hash of every route table it was sent."""

    def __init__(self, node: str, names) -> None:
        super().__init__(node, names)
        self.tables: dict[str, str] = {}
        self.responses = 0

    def on_route(self, head) -> None:
        self.responses += 1
        for packed in head.decode().resources:
            name = packed.value[2 : 2 + packed.value[1]].decode()  # field 1, first and short
            self.tables[name] = content_hash(packed.value)


def _write_paced(texts: list[tuple[Path, str]]) -> None:
    t0 = time.perf_counter()
    for n, (path, text) in enumerate(texts):
        write_atomically(path, text)
        time.sleep(max(0.0, t0 + (n + 1) / len(texts) - time.perf_counter()))


async def burst(routes: int, gateways: int, edits: int, seed: int) -> dict:
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="knative-xds-burst-"))
    for i in range(routes):
        write_atomically(
            folder / f"{route_name(i)}.yaml",
            s.dump(route_objects(i, blue=1, green=2, to_green=False)),
        )
    plane = ControlPlane()
    port = await plane.start_xds("127.0.0.1:0")
    names = envoy_names(routes)
    clients = [Tracking(f"gw-{i}", names) for i in range(gateways)]
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        follow = tasks.create_task(plane.run(FileSource(folder), ready))
        await ready.wait()
        async with connected(port, clients, timeout=120):
            before = [c.responses for c in clients]
            # Files are prepared first and written by another process, paced to spread the
            # edits over one second: in this process the GIL would let the streams slow it.
            texts = []
            for _ in range(edits):
                i = rng.randrange(routes)
                objs = route_objects(i, blue=1, green=2, to_green=rng.random() < 0.5)
                texts.append((folder / f"{route_name(i)}.yaml", s.dump(objs)))
            writer = multiprocessing.get_context("spawn").Process(
                target=_write_paced, args=(texts,)
            )
            t0 = time.perf_counter()
            writer.start()
            await asyncio.to_thread(writer.join)
            burst_s = time.perf_counter() - t0
            if writer.exitcode != 0:
                raise RuntimeError(f"the writer process failed (exit code {writer.exitcode})")
            await asyncio.sleep(0.1)  # let the watcher's last batch land

            def converged() -> bool:
                final = {n: r.version for n, r in plane.cache.current().of(ROUTE).items()}
                return all(c.tables == final for c in clients)

            async with asyncio.timeout(60):
                while not converged():
                    await asyncio.sleep(0.01)
            settle_s = time.perf_counter() - t0 - burst_s
            responses = [c.responses - b for c, b in zip(clients, before, strict=True)]
        follow.cancel()
    # Let the server see every client go before it stops: a stream still open at the stop
    # is cancelled, and gRPC prints that as a traceback.
    async with asyncio.timeout(10):
        while plane.ads.streams:
            await asyncio.sleep(0.01)
    await plane.stop(0)
    return {
        "routes": routes,
        "gateways": gateways,
        "edits": edits,
        "burst_s": round(burst_s, 2),
        "after_burst_to_all_final_s": round(settle_s, 3),
        "rds_responses_per_stream_max": max(responses),
        "snapshots_published": plane.cache.current().serial,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        r = asyncio.run(burst(args.routes, args.gateways, args.edits, args.seed))
    except* asyncio.CancelledError:
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps(r))
        return
    print_table(
        f"burst: {r['edits']} edits in {r['burst_s']} s, {r['gateways']} streams, {r['routes']} routes",
        {
            "every stream on the final state": f"{r['after_burst_to_all_final_s']} s after the burst",
            "RDS responses per stream (max)": f"{r['rds_responses_per_stream_max']} for {r['edits']} edits",
            "snapshots published": r["snapshots_published"],
            "peak RSS (control plane and clients)": f"{r['peak_rss_mb']} MB",
        },
    )


if __name__ == "__main__":
    main()
