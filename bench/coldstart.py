"""Cold start of a local revision through the real Envoy, and the activator's warm cost.

Runs knative-xds as `knative-xds up` does (`LocalSource`: the control plane on
the files, the revisions as processes, the activator and the autoscaler in the
same process and event loop) with the bundled Envoy as the gateway, the
revision being the echo app (`python -m knative_xds.local.echo`). Two figures:

- cold start: one request through Envoy to the revision at zero, from the
  request sent to its response received, split into process start → ready (the
  runner's spawn to its readiness probe passing, as the runner sees it) and
  ready → first response (what knative-xds owns: the activator forwarding the
  held request, the answer back through Envoy to the client). Between runs the
  autoscaler scales the revision to zero (its grace period set short), and the
  next run starts once the process is gone and Envoy sends the route to the
  activator again.
- warm activator overhead: the same request to the same running echo process,
  sent straight to it and through the activator (`LocalActivator` with the real
  runner), alternately on kept-alive connections; the figure is each pair's
  difference.

Everything runs on 127.0.0.1 with ports chosen at run time, and stops by itself.

    python -m bench.coldstart [--runs 20] [--requests 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from knative_xds import synth as s
from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import bootstrap_yaml, start_envoy, stop_process, wait_ready
from knative_xds.local.activator import (
    NAMESPACE_HEADER,
    PROBE_HEADER,
    PROBE_VALUE,
    REVISION_HEADER,
    LocalActivator,
)
from knative_xds.local.autoscaler import INITIAL_SCALE
from knative_xds.local.runner import LocalRevisions
from knative_xds.local.up import LocalSource
from knative_xds.model import ObjectKey, RawObject
from knative_xds.translate import GatewayConfig

from .common import free_port, percentile, print_table

ECHO = ("python", "-m", "knative_xds.local.echo")
NAME = "cold-00001"
HOST = "cold.default.example.com"
# The autoscaler's scale-to-zero grace period here: short, so the runs follow each other.
GRACE = 0.5
TARGET_READY_TO_RESPONSE_MS = 20.0
TARGET_WARM_OVERHEAD_MS = 1.0


def figures(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50": round(percentile(values_ms, 50), 3),
        "p99": round(percentile(values_ms, 99), 3),
        "min": round(min(values_ms), 3),
        "max": round(max(values_ms), 3),
    }


def cold_objects() -> list[dict]:
    """One Route to one echo revision that starts at zero."""
    return [
        s.route("cold", [s.target(NAME, 100)]),
        s.revision(NAME, command=ECHO, annotations={INITIAL_SCALE: "0"}),
    ]


@dataclass(frozen=True, slots=True)
class ColdStart:
    sent: float  # perf_counter, all four
    spawned: float
    ready: float
    received: float


def get(port: int, hostname: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Host": hostname, **(headers or {})})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def wait_routed_to_activator(port: int, hostname: str, timeout: float = 60) -> None:
    """Until Envoy sends `hostname` to the activator; Knative's probe asks it without
    waking the revision (the activator answers it itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = get(port, hostname, {PROBE_HEADER: PROBE_VALUE})
            if status == 200 and body == PROBE_VALUE.encode():
                return
        time.sleep(0.01)
    raise TimeoutError(f"Envoy did not route {hostname} to the activator within {timeout:g}s")


def first_request(port: int, hostname: str, revision: str) -> tuple[float, float]:
    """One request to a revision at zero; (sent, received) by perf_counter."""
    sent = time.perf_counter()
    status, body = get(port, hostname)
    received = time.perf_counter()
    if status != 200 or json.loads(body)["revision"] != revision:
        raise RuntimeError(
            f"{hostname}: expected 200 from {revision}, got {status}: {body[:200]!r}"
        )
    return sent, received


async def until(check, what: str, timeout: float = 60) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}") from None


async def cold_starts(runs: int, workdir: Path) -> list[ColdStart]:
    config = workdir / "knative"
    config.mkdir()
    (config / "cold.yaml").write_text(s.dump(cold_objects()))
    gateway = GatewayConfig(
        listen_address="127.0.0.1",
        external_port=free_port(),
        internal_port=free_port(),
        external_tls_port=free_port(),
    )
    admin = free_port()
    plane = ControlPlane(Settings(gateway=gateway))
    source = LocalSource(config, state_dir=workdir / "state", admin_port=admin, grace=GRACE)
    readiness: list[tuple[float, float]] = []
    source.revisions.on_ready = lambda key, spawned, ready: readiness.append((spawned, ready))
    loaded = asyncio.Event()
    task = asyncio.create_task(plane.run(source, loaded))
    envoy = None
    try:
        async with asyncio.timeout(60):
            await loaded.wait()
        xds = await plane.start_xds("127.0.0.1:0")
        boot = workdir / "envoy.yaml"
        boot.write_text(bootstrap_yaml(xds_host="127.0.0.1", xds_port=xds, admin_port=admin))
        envoy = await start_envoy(boot, log_path=workdir / "envoy.log")
        await wait_ready(admin, envoy, timeout=60)
        out = []
        for run in range(runs):
            # At zero: no process left, and Envoy sends the route to the activator again
            # (the run times the revision's wake, not Envoy learning where to send it).
            await until(lambda: not source.revisions.pids(), f"{NAME} to be at zero (run {run})")
            await asyncio.to_thread(wait_routed_to_activator, gateway.external_port, HOST)
            before = len(readiness)
            # The client runs in a thread, blocked on its socket while the loop works.
            sent, received = await asyncio.to_thread(
                first_request, gateway.external_port, HOST, NAME
            )
            if len(readiness) != before + 1:
                raise RuntimeError(f"run {run}: {len(readiness) - before} processes started, not 1")
            spawned, ready = readiness[-1]
            out.append(ColdStart(sent, spawned, ready, received))
        return out
    finally:
        if envoy is not None:
            await stop_process(envoy)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await plane.stop(0)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(source.log_dir, ignore_errors=True)


async def warm_overhead(
    requests: int, workdir: Path
) -> tuple[list[float], list[float], list[float]]:
    """(direct, through the activator, their pairwise difference), in ms."""
    # No gateway here: nothing to publish, nothing to drain.
    revisions = LocalRevisions(lambda changes: None, log_dir=workdir, announce=lambda text: None)
    name = "warm-00001"
    key = ObjectKey("default", name)
    raw = RawObject.from_dict(s.revision(name, command=ECHO), "bench")
    revisions.observe({("Revision", key): raw})
    activator = LocalActivator(revisions)
    try:
        echo_port = await revisions.wake(key)
        activator_port = await activator.start()
        direct_url = f"http://127.0.0.1:{echo_port}/"
        through_url = f"http://127.0.0.1:{activator_port}/"
        via = {REVISION_HEADER: name, NAMESPACE_HEADER: "default"}
        direct, through = [], []
        async with aiohttp.ClientSession() as client:

            async def timed(url: str, headers: dict[str, str]) -> float:
                t0 = time.perf_counter()
                async with client.get(url, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"GET {url}: {r.status}")
                return (time.perf_counter() - t0) * 1000

            for _ in range(max(20, requests // 20)):  # warm both paths' connections first
                await timed(direct_url, {})
                await timed(through_url, via)
            for n in range(requests):
                # Alternating which goes first, so neither path always runs just after the other.
                if n % 2:
                    through.append(await timed(through_url, via))
                    direct.append(await timed(direct_url, {}))
                else:
                    direct.append(await timed(direct_url, {}))
                    through.append(await timed(through_url, via))
        return direct, through, [t - d for d, t in zip(direct, through, strict=True)]
    finally:
        await activator.close()
        await revisions.close()


async def run(runs: int, requests: int, workdir: Path) -> dict:
    starts = await cold_starts(runs, workdir)
    direct, through, overhead = await warm_overhead(requests, workdir)
    ms = 1000
    return {
        "runs": runs,
        "requests": requests,
        "request_to_first_response_ms": figures([(c.received - c.sent) * ms for c in starts]),
        "request_to_spawn_ms": figures([(c.spawned - c.sent) * ms for c in starts]),
        "start_to_ready_ms": figures([(c.ready - c.spawned) * ms for c in starts]),
        "ready_to_first_response_ms": figures([(c.received - c.ready) * ms for c in starts]),
        "warm_direct_ms": figures(direct),
        "warm_through_activator_ms": figures(through),
        "warm_activator_overhead_ms": figures(overhead),
        "targets_ms": {
            "ready_to_first_response_p50": TARGET_READY_TO_RESPONSE_MS,
            "warm_activator_overhead_p50": TARGET_WARM_OVERHEAD_MS,
        },
    }


def _row(f: dict[str, float]) -> str:
    return f"p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms, max {f['max']:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="cold starts (default 20)")
    parser.add_argument("--requests", type=int, default=2000, help="warm request pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.requests < 1:
        parser.error("--runs and --requests must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="knative-xds-bench-"))
    try:
        result = asyncio.run(run(args.runs, args.requests, workdir))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(
        f"coldstart: echo app, {args.runs} cold starts through Envoy, "
        f"{args.requests} warm request pairs",
        {
            "request → first response": _row(result["request_to_first_response_ms"]),
            "  request → process spawned": _row(result["request_to_spawn_ms"]),
            "  process start → ready": _row(result["start_to_ready_ms"]),
            "  ready → first response (target p50 ≤ 20 ms)": _row(
                result["ready_to_first_response_ms"]
            ),
            "warm, direct": _row(result["warm_direct_ms"]),
            "warm, through the activator": _row(result["warm_through_activator_ms"]),
            "warm, activator overhead (target p50 ≤ 1 ms)": _row(
                result["warm_activator_overhead_ms"]
            ),
        },
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
