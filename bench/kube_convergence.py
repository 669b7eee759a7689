"""KIngress edit through the Kubernetes watch → the real Envoy serving the new split.

Runs `knative-xds serve --kubernetes` as a subprocess against the project's fake
Kubernetes API server (in this process), holding N KIngresses. Each KIngress has
two hosts: its own, sent to its "blue" Service, and a second one sent to its
"green" Service, so both clusters always exist and an edit changes one route
table only. An edit swaps the two (a MODIFIED watch event); the figure is the
time from the write to the first request through Envoy answered by the new color.
`to_published` splits off the control plane's part: from the write to its log line
"published snapshot" (watch delivery + pipeline; the log's clock has 1 ms steps),
the rest being the ADS push, Envoy applying the table and the next poll.

    python -m bench.kube_convergence --ingresses 5000 --edits 100 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from knative_xds.envoy import require_envoy
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION
from tests.fake_kube_api import FakeApiServer

from .common import free_port, print_table, ready, spawn, stop_all, summary, wait_served
from .relist import control_plane

NS = "bench"


def name(i: int) -> str:
    return f"k{i:05d}"


def host(i: int) -> str:
    return f"{name(i)}.{NS}.example.com"


def _rule(hostname: str, service: str) -> dict:
    split = {"serviceNamespace": NS, "serviceName": service, "servicePort": 80}
    return {
        "hosts": [hostname],
        "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split]}]},
    }


def kingress(i: int, *, to_green: bool) -> dict:
    # The other color keeps a host of its own, so its cluster stays through every edit.
    main, other = ("green", "blue") if to_green else ("blue", "green")
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {
            "name": name(i),
            "namespace": NS,
            "annotations": {INGRESS_CLASS_ANNOTATION: DEFAULT_INGRESS_CLASS},
        },
        "spec": {
            "rules": [
                _rule(host(i), f"{name(i)}-{main}"),
                _rule(f"{name(i)}-other.{NS}.example.com", f"{name(i)}-{other}"),
            ]
        },
    }


def backend(i: int, color: str, port: int) -> list[dict]:
    service = f"{name(i)}-{color}"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-abcde",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port}],
        },
    ]


async def run(ingresses: int, edits: int, workdir: Path) -> dict:
    ports = {"blue": free_port(), "green": free_port()}
    procs = [
        spawn([sys.executable, "-m", "knative_xds.local.echo", "--name", c, "--port", str(p)],
               workdir / f"{c}.log")
        for c, p in ports.items()
    ]  # fmt: skip
    api = FakeApiServer()
    await api.start()
    try:
        for i in range(ingresses):
            for color, port in ports.items():
                for obj in backend(i, color, port):
                    api.put(obj)
            api.put(kingress(i, to_green=False))
        xds, health = free_port(), free_port()
        with control_plane(workdir, api.url, xds, health) as proc:
            async with asyncio.timeout(600):
                # Polled from a thread: this loop also serves the API being read.
                while not await asyncio.to_thread(_up, health, proc):
                    await asyncio.sleep(0.1)
            admin = free_port()
            boot = subprocess.run(
                [sys.executable, "-m", "knative_xds.cli", "bootstrap",
                 "--xds-address", f"127.0.0.1:{xds}", "--admin-port", str(admin)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            (workdir / "envoy.yaml").write_text(boot)
            envoy = spawn(
                [str(require_envoy()), "-c", str(workdir / "envoy.yaml"), "--log-level", "warn",
                 "--disable-hot-restart", "--concurrency", "2"],
                workdir / "envoy.log",
            )  # fmt: skip
            procs.append(envoy)
            external = _external_port(proc)
            last = ingresses - 1
            await asyncio.to_thread(wait_served, external, host(last), "blue", 600)
            on_green: set[int] = set()
            times: list[float] = []
            written: list[float] = []  # wall clock of each write, as the log has it
            for n in range(edits):
                i = (n * 7919) % ingresses
                to_green = i not in on_green
                written.append(time.time())
                t0 = time.perf_counter()
                api.put(kingress(i, to_green=to_green))
                want = "green" if to_green else "blue"
                t1 = await asyncio.to_thread(wait_served, external, host(i), want, 30)
                times.append((t1 - t0) * 1000)
                on_green ^= {i}
        took = summary(times)
        published = _to_published(written, (workdir / "knative-xds.log").read_text())
        return {
            "ingresses": ingresses,
            "edits": edits,
            "edit_to_served": took,
            "p50_ms": took["p50_ms"],
            "p99_ms": took["p99_ms"],
            "to_published": summary(published),
        }
    finally:
        stop_all(procs)
        await api.close()


def _to_published(written: list[float], log: str) -> list[float]:
    """For each write, ms until the control plane's next "published snapshot" line."""
    stamps = sorted(
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log.splitlines()
        if "published snapshot" in line
    )
    out = []
    for t in written:
        # The log's clock is truncated to the ms: a line stamped within it counts.
        later = [s for s in stamps if s >= t - 0.001]
        if later:
            out.append(max(0.0, (later[0] - t) * 1000))
    return out


def _up(health: int, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"knative-xds exited with code {proc.returncode}")
    try:
        return ready(health)
    except OSError:
        return False


def _external_port(proc: subprocess.Popen) -> int:
    args = proc.args
    return int(args[args.index("--external-port") + 1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingresses", type=int, default=5000)
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The control plane logs each published snapshot at INFO (bench.relist's launcher
    # takes its level from BENCH_LOG).
    os.environ.setdefault("BENCH_LOG", "info")
    with tempfile.TemporaryDirectory(prefix="bench-kube-convergence-") as tmp:
        result = asyncio.run(run(args.ingresses, args.edits, Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return
    print_table(
        f"kube_convergence: {args.ingresses} KIngresses, {args.edits} edits",
        {
            "edit → served p50": f"{result['p50_ms']} ms",
            "edit → served p99": f"{result['p99_ms']} ms",
            "edit → served max": f"{result['edit_to_served']['max_ms']} ms",
            "edit → published p50": f"{result['to_published']['p50_ms']} ms",
        },
    )


if __name__ == "__main__":
    main()
