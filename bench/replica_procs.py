"""The processes of bench.replicas: `serve --kubernetes` replicas, and what the API server saw.

Each replica is started as the Deployment in deploy/ runs it (KIngress input,
status through the Lease), pointed at the fake API server by a kubeconfig, with
its own ports on 127.0.0.1, its own pod name (the Lease holder's identity) and
its own loop-stall probe file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from knative_xds.admin.loop_probe import ENV as LOOP_PROBE_ENV
from tests.fake_kube_api import FakeApiServer

from .common import cpu_seconds, free_port, ready

LEASE_NAMESPACE = "bench"


@dataclass(frozen=True, slots=True)
class Replica:
    index: int
    proc: subprocess.Popen
    xds: int
    health: int
    probe: Path  # its loop-stall probe's file

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (the peak so far), in kB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def status(self) -> dict:
        url = f"http://127.0.0.1:{self.health}/debug/status"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())


def write_kubeconfig(folder: Path, url: str) -> Path:
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


def start_replica(index: int, workdir: Path, kubeconfig: Path) -> Replica:
    xds, health = free_port(), free_port()
    args = [
        sys.executable, "-m", "knative_xds.cli", "--log-level", os.environ.get("BENCH_LOG", "warning"),
        "serve", "--kubernetes", "--xds-port", str(xds), "--xds-address", "127.0.0.1",
        "--health-port", str(health), "--listen-address", "127.0.0.1",
        "--external-port", str(free_port()), "--internal-port", str(free_port()),
        "--external-tls-port", str(free_port()), "--lease-namespace", LEASE_NAMESPACE,
    ]  # fmt: skip
    probe = workdir / f"loop-probe-{index}.jsonl"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "POD_NAME": f"replica-{index}",
        LOOP_PROBE_ENV: str(probe),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)  # the kubeconfig, never an in-cluster config
    log = open(workdir / f"replica-{index}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child holds its own copy
    return Replica(index, proc, xds, health, probe)


async def wait_ready(replicas: list[Replica], timeout: float) -> None:
    """Until every replica answers /ready (its first complete state loaded)."""

    def up(r: Replica) -> bool:
        if r.proc.poll() is not None:
            raise RuntimeError(f"replica {r.index} exited with code {r.proc.returncode}")
        try:
            return ready(r.health)
        except OSError:
            return False

    async with asyncio.timeout(timeout):
        for r in replicas:
            # Polled from a thread: this loop also serves the API the replicas are reading.
            while not await asyncio.to_thread(up, r):
                await asyncio.sleep(0.05)


async def stop_replicas(replicas: list[Replica]) -> None:
    """SIGTERM (a replica gives its Lease up on the way out, so the API stays up meanwhile)."""
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.terminate()
    for r in replicas:
        try:
            await asyncio.to_thread(r.proc.wait, 15)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            await asyncio.to_thread(r.proc.wait)


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """What the API server was asked, from its record of requests."""

    watches: int  # watch requests (each replica opens one per kind it reads, and reopens)
    watches_open_peak: int  # watches being served at once
    lists: int  # list requests (pages counted one by one)
    status_patches: int  # KIngress status writes (the Lease holder's)
    lease_requests: int  # Lease gets, creates and replaces (every replica's)
    other: int

    def as_dict(self) -> dict[str, int]:
        return {
            "watches": self.watches,
            "watches_open_peak": self.watches_open_peak,
            "lists": self.lists,
            "status_patches": self.status_patches,
            "lease_requests": self.lease_requests,
            "other_requests": self.other,
        }


def api_load(api: FakeApiServer, since: int = 0) -> ServerLoad:
    """The requests from the `since`-th one on."""
    seen = api.seen[since:]
    lease = [s for s in seen if "/leases" in s.path]
    patches = [s for s in seen if s.verb == "patch" and s.path.endswith("/status")]
    watches = sum(1 for s in seen if s.verb == "watch")
    lists = sum(1 for s in seen if s.verb == "list")
    return ServerLoad(
        watches=watches,
        watches_open_peak=api.peak.get("watch", 0),
        lists=lists,
        status_patches=len(patches),
        lease_requests=len(lease),
        other=len(seen) - watches - lists - len(patches) - len(lease),
    )
