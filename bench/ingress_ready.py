"""KIngress spec change → Ready in its status, and → the real Envoy serving it.

Runs knative-xds as `serve --kubernetes` does (KIngress input, status reporter)
against the project's fake Kubernetes API server (the real list/watch and
status-subresource protocol over HTTP on loopback), with the bundled Envoy as the
one gateway and an echo app behind every KIngress's Service. After every
KIngress is Ready, it edits one KIngress at a time (a header its path sets, so
the generation moves and the echo shows the new value) and times, from the
write to the API server:

- ready: until the status the control plane PATCHes says Ready with
  observedGeneration equal to the new generation (what Knative waits for);
- served: until a request through Envoy comes back with the new header.

The fake API server and the control plane share one process and event loop, so
the server's work is counted in both figures. Everything runs on 127.0.0.1 with
ports chosen at run time, and stops by itself.

    python -m bench.ingress_ready --ingresses 1000 [--edits 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes.aio.client import ApiClient, Configuration

from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import bootstrap_yaml, start_envoy, stop_process, wait_ready
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION
from knative_xds.sources.kube import HttpApi, KubeSource
from knative_xds.sources.kube_watch import Backoff, WatchOptions
from knative_xds.status.lease import LeaseSettings
from knative_xds.status.reporter import ReporterSettings
from knative_xds.translate import GatewayConfig
from tests.fake_kube_api import FakeApiServer

from .common import free_port, print_table, summary

NS = "bench"
EDIT_HEADER = "K-Bench-Edit"


def kingress(i: int, edit: int) -> dict:
    name = f"k{i:05d}"
    split = {"serviceNamespace": NS, "serviceName": name, "servicePort": 80}
    path = {"appendHeaders": {EDIT_HEADER: str(edit)}, "splits": [split]}
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": NS,
            "annotations": {INGRESS_CLASS_ANNOTATION: DEFAULT_INGRESS_CLASS},
        },
        "spec": {
            "rules": [{"hosts": [host(i)], "visibility": "ExternalIP", "http": {"paths": [path]}}]
        },
    }


def host(i: int) -> str:
    return f"k{i:05d}.bench.example.com"


def backend(i: int, port: int) -> list[dict]:
    name = f"k{i:05d}"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abcde",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port}],
    }
    return [service, endpoints]


def is_ready(api: FakeApiServer, i: int, generation: int) -> bool:
    obj = api.stored("networking.internal.knative.dev/v1alpha1", "Ingress", NS, f"k{i:05d}")
    status = obj.get("status") or {}
    if status.get("observedGeneration") != generation:
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def generation_of(api: FakeApiServer, i: int) -> int:
    obj = api.stored("networking.internal.knative.dev/v1alpha1", "Ingress", NS, f"k{i:05d}")
    return int(obj["metadata"].get("generation", 0))


def wait_served(port: int, i: int, edit: int, deadline: float) -> float:
    """Poll through Envoy until the echo reports the edit's header; the time it answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        while time.perf_counter() < deadline:
            try:
                conn.request("GET", "/", headers={"Host": host(i)})
                reply = conn.getresponse()
                body = reply.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                time.sleep(0.001)
                continue
            if reply.status == 200:
                got = json.loads(body)["headers"].get(EDIT_HEADER.lower())
                if got == str(edit):
                    return time.perf_counter()
            time.sleep(0.0005)
    finally:
        conn.close()
    raise TimeoutError(f"{host(i)} never served edit {edit}")


async def run(ingresses: int, edits: int, workdir: Path) -> dict:
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "knative_xds.local.echo", "--name", "echo"],
        env={**os.environ, "PORT": str(echo_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = FakeApiServer()
    await api.start()
    client = ApiClient(Configuration(host=api.url))
    envoy = None
    gateway = GatewayConfig(
        listen_address="127.0.0.1",
        external_port=free_port(),
        internal_port=free_port(),
        external_tls_port=free_port(),
    )
    plane = ControlPlane(Settings(gateway=gateway, hold_empty_start=False))
    task = None
    try:
        for i in range(ingresses):
            for obj in backend(i, echo_port):
                api.put(obj)
            api.put(kingress(i, 0))
        lease = LeaseSettings(duration=2, renew_every=0.5, retry_every=0.2)
        plane.report_status(HttpApi(client), ReporterSettings(lease=lease))
        watch = WatchOptions(backoff=Backoff(first=0.02, cap=0.2), watch_seconds=300)
        source = KubeSource(HttpApi(client), input="ingress", options=watch)
        xds = await plane.start_xds("127.0.0.1:0")
        started = time.perf_counter()
        task = asyncio.create_task(plane.run(source))
        admin = free_port()
        boot = workdir / "envoy.yaml"
        boot.write_text(bootstrap_yaml(xds_host="127.0.0.1", xds_port=xds, admin_port=admin))
        envoy = await start_envoy(boot, log_path=workdir / "envoy.log")
        await wait_ready(admin, envoy, timeout=60)
        async with asyncio.timeout(300):
            await api.wait_for(lambda: all(is_ready(api, i, 1) for i in range(ingresses)))
        all_ready_s = time.perf_counter() - started

        ready_ms: list[float] = []
        served_ms: list[float] = []
        for n in range(1, edits + 1):
            i = (n * 7919) % ingresses  # spread over the KIngresses
            before = generation_of(api, i)
            t0 = time.perf_counter()
            api.put(kingress(i, n))
            generation = before + 1
            served = asyncio.create_task(
                asyncio.to_thread(wait_served, gateway.external_port, i, n, t0 + 30)
            )
            async with asyncio.timeout(30):
                await api.wait_for(lambda i=i, g=generation: is_ready(api, i, g))
            ready_ms.append((time.perf_counter() - t0) * 1000)
            served_ms.append((await served - t0) * 1000)
        return {
            "ingresses": ingresses,
            "edits": edits,
            "all_ready_after_start_s": round(all_ready_s, 2),
            "ready": summary(ready_ms),
            "served": summary(served_ms),
            "status_writes": plane.reporter.summary()["written"] if plane.reporter else 0,
        }
    finally:
        if envoy is not None:
            await stop_process(envoy)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await plane.stop(0)
        await client.close()
        await api.close()
        echo.terminate()
        echo.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingresses", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        result = asyncio.run(run(args.ingresses, args.edits, Path(tmp)))
    if args.json:
        result["ready_p50_ms"] = result["ready"]["p50_ms"]
        result["ready_p99_ms"] = result["ready"]["p99_ms"]
        result["served_p50_ms"] = result["served"]["p50_ms"]
        print(json.dumps(result))
        return
    print_table(
        f"ingress_ready: {args.ingresses} KIngresses, {args.edits} edits",
        {
            "every KIngress Ready after start": f"{result['all_ready_after_start_s']} s",
            "spec change → Ready, p50": f"{result['ready']['p50_ms']} ms",
            "spec change → Ready, p99": f"{result['ready']['p99_ms']} ms",
            "spec change → Envoy serves, p50": f"{result['served']['p50_ms']} ms",
            "spec change → Envoy serves, p99": f"{result['served']['p99_ms']} ms",
            "status writes": result["status_writes"],
        },
    )


if __name__ == "__main__":
    main()
