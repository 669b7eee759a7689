"""A relist of N KIngresses after an outage: are the ADS streams served meanwhile?

Runs `knative-xds serve --kubernetes` as a subprocess (its own event loop, with
the loop-stall probe on) against the project's fake Kubernetes API server, which
runs in this process and holds N KIngresses, each with its Service and
EndpointSlice. Lightweight ADS clients subscribe as Envoy does; once one
stream holds every KIngress's table, the outage: every
watch is cut and held away while `--changed` of the KIngresses are edited and
`--deleted` others are deleted, then the API server forgets that history. The
watches come back to 410 Gone, and the source lists everything again.

Figures, from the watches' return on:

- `relist_s`: until one observer stream (it decodes its route tables) holds every
  edited KIngress's new table;
- `max_loop_gap_ms`: the longest stall of the control plane's event loop in that
  window (the probe's overshoot of its 5 ms sleep, `admin/loop_probe.py`);
- `ping_*`: a fresh ADS stream asking for one endpoint assignment, opened again
  and again through the window: the time to its answer (p50, max, how many).
  A stalled loop shows here as in the probe.

    python -m bench.relist --objects 10000 [--changed 10000] [--deleted 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from knative_xds.admin.loop_probe import ENV as LOOP_PROBE_ENV
from knative_xds.model import ObjectKey
from knative_xds.model.from_kingress import service_cluster
from knative_xds.resources import ENDPOINT, ROUTE
from knative_xds.translate.names import Listener, route_table_name
from tests.fake_kube_api import FakeApiServer

from .clients import CHANNEL_OPTIONS, SOTW_METHOD, Client, Head, connected, read_head
from .common import free_port, loop_stall_max_ms, print_table, summary
from .ingress_ready import EDIT_HEADER, NS, backend, kingress

NETWORKING = "networking.internal.knative.dev/v1alpha1"
# The collections the source relists (ingress input): KIngresses and what they name.
OUTAGE = ("/ingresses", "/services", "/endpointslices")


def name(i: int) -> str:
    return f"k{i:05d}"


def table(i: int) -> str:
    return route_table_name(Listener.EXTERNAL, ObjectKey(NS, name(i)))


class Observer(Client):
    """A stream that decodes its route tables: which edit each KIngress's table carries."""

    def __init__(self, node: str, names: dict[str, list[str]]) -> None:
        super().__init__(node, names)
        self.edits: dict[str, str] = {}
        self.changed = asyncio.Event()

    def on_route(self, head: Head) -> None:
        for any_ in head.decode().resources:
            config = route_pb2.RouteConfiguration.FromString(any_.value)
            self.edits[config.name] = _edit_of(config)
        self.changed.set()


def _edit_of(config: route_pb2.RouteConfiguration) -> str:
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            for option in route.request_headers_to_add:
                if option.header.key == EDIT_HEADER:
                    return option.header.value
    return ""


def envoy_names(objects: int) -> dict[str, list[str]]:
    """What an Envoy asks for by name: each KIngress's table and its Service's endpoints."""
    return {
        ROUTE: [table(i) for i in range(objects)],
        ENDPOINT: [service_cluster(ObjectKey(NS, name(i)), 80) for i in range(objects)],
    }


@dataclass(frozen=True, slots=True)
class Probe:
    """Where the control plane's loop-stall probe writes (what loop_stall_max_ms reads)."""

    loop_probe: Path


def kubeconfig(folder: Path, url: str) -> Path:
    path = folder / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bench"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def control_plane(workdir: Path, url: str, xds: int, health: int) -> Iterator[subprocess.Popen]:
    args = [
        sys.executable, "-m", "knative_xds.cli", "--log-level", os.environ.get("BENCH_LOG", "warning"),
        "serve", "--kubernetes", "--xds-address", "127.0.0.1", "--xds-port", str(xds),
        "--health-port", str(health), "--listen-address", "127.0.0.1",
        "--external-port", str(free_port()), "--internal-port", str(free_port()),
        "--external-tls-port", str(free_port()),
        "--lease-namespace", NS,
    ]  # fmt: skip
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig(workdir, url)),
        "POD_NAME": "bench-relist",
        LOOP_PROBE_ENV: str(workdir / "loop-probe.jsonl"),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(workdir / "knative-xds.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(check, what: str, timeout: float, every: float = 0.05) -> None:
    """Poll `check` (cheap or not: every `every` s, never in a tight loop) until true."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(every)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def _exited(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def _ready(health: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def pings(port: int, cluster: str, stop: asyncio.Event) -> list[float]:
    """Open a fresh stream for one endpoint assignment, again and again until `stop`:
    the milliseconds from opening each to its answer."""
    taken: list[float] = []
    request = discovery_pb2.DiscoveryRequest(
        type_url=ENDPOINT, resource_names=[cluster], node=base_pb2.Node(id="bench-ping")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        method = ch.stream_stream(
            SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=read_head,
        )
        while not stop.is_set():
            started = time.perf_counter()
            call = method(_once(request))
            try:
                async with asyncio.timeout(30):
                    await call.read()
            finally:
                call.cancel()
            taken.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
    return taken


async def _once(request: discovery_pb2.DiscoveryRequest):
    # One request, and the stream kept open: a half-close would end it before its answer.
    yield request
    await asyncio.Event().wait()


async def run(objects: int, changed: int, deleted: int, gateways: int, workdir: Path) -> dict:
    if changed + deleted > objects:
        raise SystemExit("--changed plus --deleted must not exceed --objects")
    api = FakeApiServer()
    await api.start()
    try:
        for i in range(objects):
            for obj in backend(i, 9):  # no request is sent: any port does
                api.put(obj)
            api.put(kingress(i, 0))
        xds, health = free_port(), free_port()
        with control_plane(workdir, api.url, xds, health) as proc:
            started = time.perf_counter()
            await until(lambda: _ready(health) or _exited(proc), "knative-xds to load", 600, 0.2)
            if _exited(proc):
                log = (workdir / "knative-xds.log").read_text()[-2000:]
                raise SystemExit(f"knative-xds exited with {proc.returncode}:\n{log}")
            first_load_s = time.perf_counter() - started
            names = envoy_names(objects)
            observer = Observer("bench-observer", names)
            clients = [observer, *(Client(f"gw-{n}", names) for n in range(gateways - 1))]
            async with connected(xds, clients, timeout=600):
                await until(
                    lambda: all(observer.edits.get(table(i)) == "0" for i in range(objects)),
                    "the observer to hold every KIngress's table",
                    600,
                    0.2,
                )
                result = await _outage(api, xds, observer, objects, changed, deleted, workdir)
        result.update(objects=objects, gateways=gateways, first_load_s=round(first_load_s, 2))
        return result
    finally:
        await api.close()


async def _outage(
    api: FakeApiServer,
    xds: int,
    observer: Observer,
    objects: int,
    changed: int,
    deleted: int,
    workdir: Path,
) -> dict:
    held = [api.hold("watch", part) for part in OUTAGE]
    api.drop_watches()
    for rule in held:
        await rule.arrived.wait()
    edited = range(changed)
    for i in edited:
        api.put(kingress(i, 1))
    for i in range(objects - deleted, objects):
        api.delete(NETWORKING, "Ingress", NS, name(i))
    api.compact()  # the versions the held watches resume from are gone: 410 Gone
    stop = asyncio.Event()
    since, t0 = time.time(), time.perf_counter()
    pinging = asyncio.create_task(pings(xds, service_cluster(ObjectKey(NS, name(0)), 80), stop))
    for rule in held:
        rule.release()
    want = {table(i) for i in edited}
    try:
        async with asyncio.timeout(600):
            while any(observer.edits.get(t) != "1" for t in want):
                observer.changed.clear()
                await observer.changed.wait()
        relist_s = time.perf_counter() - t0
        until_wall = time.time()
    finally:
        stop.set()
        taken = await pinging
    gap = loop_stall_max_ms(Probe(workdir / "loop-probe.jsonl"), since, until_wall)
    ping = summary(taken)
    return {
        "changed": changed,
        "deleted": deleted,
        "relist_s": round(relist_s, 3),
        "max_loop_gap_ms": gap,
        "ping_n": ping["n"],
        "ping_p50_ms": ping["p50_ms"],
        "ping_max_ms": ping["max_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--objects",
        type=int,
        default=10000,
        help="KIngresses (each with its Service and EndpointSlice)",
    )
    parser.add_argument(
        "--changed",
        type=int,
        default=None,
        help="KIngresses edited during the outage (default: all but the deleted)",
    )
    parser.add_argument(
        "--deleted",
        type=int,
        default=None,
        help="KIngresses deleted during the outage (default: 1%%)",
    )
    parser.add_argument(
        "--gateways", type=int, default=10, help="ADS streams subscribed as Envoy does"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    deleted = args.objects // 100 if args.deleted is None else args.deleted
    changed = args.objects - deleted if args.changed is None else args.changed
    with tempfile.TemporaryDirectory(prefix="bench-relist-") as tmp:
        r = asyncio.run(run(args.objects, changed, deleted, max(1, args.gateways), Path(tmp)))
    if args.json:
        print(json.dumps(r))
        return
    print_table(
        f"relist: {r['objects']} KIngresses, {r['changed']} edited and {r['deleted']} deleted "
        f"during the outage, {r['gateways']} ADS streams",
        {
            "first load (process start → ready)": f"{r['first_load_s']} s",
            "watches back → every edit held by a stream": f"{r['relist_s']} s",
            "longest event-loop stall meanwhile": f"{r['max_loop_gap_ms']} ms",
            "fresh ADS stream → its answer, p50": f"{r['ping_p50_ms']} ms",
            "fresh ADS stream → its answer, max": f"{r['ping_max_ms']} ms ({r['ping_n']} streams)",
        },
    )


if __name__ == "__main__":
    main()
