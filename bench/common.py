"""Shared by the benchmarks: synthetic Knative objects at scale, and the real processes.

Everything runs on this machine over loopback: knative-xds and Envoy as
subprocesses (as a user runs them), echo apps as the revisions' pods.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from knative_xds import synth as s
from knative_xds.admin.loop_probe import ENV as LOOP_PROBE_ENV
from knative_xds.envoy import (
    HEAP_PER_REVISION_BYTES,
    MAX_HEAP_BYTES,
    bootstrap_yaml,
    require_envoy,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p99_ms": round(percentile(values_ms, 99), 2),
        "max_ms": round(max(values_ms), 2) if values_ms else float("nan"),
        "mean_ms": round(statistics.fmean(values_ms), 2) if values_ms else float("nan"),
    }


def route_name(i: int) -> str:
    return f"svc-{i:05d}"


def route_objects(i: int, *, blue: int, green: int, to_green: bool) -> list[dict]:
    """One Route with two revisions (blue, green), all traffic on one of them."""
    name = route_name(i)
    a, b = f"{name}-00001", f"{name}-00002"
    # Both targets are tagged, so both clusters stay: an edit changes only the route table.
    traffic = [
        s.target(a, 0 if to_green else 100, tag="prev"),
        s.target(b, 100 if to_green else 0, tag="next"),
    ]
    return [
        s.route(name, traffic),
        s.revision(a),
        s.revision(b),
        s.endpoint_slice(a, ["127.0.0.1"], blue),
        s.endpoint_slice(b, ["127.0.0.1"], green, suffix="b"),
    ]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Stack:
    """knative-xds serve + Envoy + two echo apps, as subprocesses."""

    workdir: Path
    config: Path
    external: int
    admin: int
    health: int
    xds: int
    procs: list[subprocess.Popen]
    app_ports: tuple[int, int]
    started: float  # perf_counter when knative-xds was spawned
    started_wall: float  # the same moment by the wall clock, as Envoy's log has it
    loaded: float  # perf_counter when it reported its first state loaded
    control_plane: list[str] = field(default_factory=list)  # how knative-xds was started

    @property
    def loop_probe(self) -> Path:
        """Where knative-xds's loop-stall probe writes (see loop_stall_max_ms)."""
        return self.workdir / "loop-probe.jsonl"

    def ports(self) -> tuple[int, int]:
        return self.app_ports

    def host(self, i: int) -> str:
        return f"{route_name(i)}.default.example.com"

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/debug/status", timeout=5) as r:
            return json.loads(r.read())

    def rss_kb(self, index: int = 0) -> int:
        for line in Path(f"/proc/{self.procs[index].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def envoy_stats(admin: int, prefix: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={prefix}", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.isdigit():
            out[k] = int(v)
    return out


# Envoy logs this, with its own timestamp, once every cluster has warmed (its endpoints
# applied) and before it asks for listeners.
_ALL_WARM = "cm init: all clusters initialized"


def wait_all_warm(st: Stack, clusters: int, timeout: float) -> float:
    """When Envoy said every cluster was warm (perf_counter), once its stats confirm
    `clusters` active clusters (plus its xds one) and none warming.

    The time is Envoy's own log line, not when the admin interface answered: the
    admin shares Envoy's main thread with xDS, which is busy applying route tables
    right after the clusters, so a poll would add seconds that are not warming.
    """

    def warm() -> bool:
        stats = envoy_stats(st.admin, "^cluster_manager\\.(active|warming)_clusters$")
        return (
            stats.get("cluster_manager.active_clusters", 0) >= clusters + 1
            and stats.get("cluster_manager.warming_clusters", 1) == 0
        )

    _wait(warm, f"Envoy to hold {clusters} warm clusters", timeout)
    for line in (st.workdir / "envoy.log").read_text().splitlines():
        if _ALL_WARM in line:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            return st.started + (stamp - st.started_wall)
    raise RuntimeError(f"Envoy's log does not say {_ALL_WARM!r}")


def _wait(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            if check():
                return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ready(health_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=2) as r:
        return r.status == 200


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Ask every process to stop, then wait for each (killed after 10 s)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def envoy_heap(revisions: int) -> int:
    """The gateway's heap limit for a benchmark: the default, or twice what `revisions`
    take (past some 30,000 the default would refuse every request as overloaded)."""
    return max(MAX_HEAP_BYTES, 2 * revisions * HEAP_PER_REVISION_BYTES)


@contextlib.contextmanager
def stack(routes: int, *, delta: bool = False, envoy: bool = True) -> Iterator[Stack]:
    """Write `routes` Routes (2 revisions each), start everything, yield when all is served."""
    workdir = Path(tempfile.mkdtemp(prefix="knative-xds-bench-"))
    config = workdir / "knative"
    config.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        blue, green = free_port(), free_port()
        for name, port in (("blue", blue), ("green", green)):
            procs.append(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "knative_xds.local.echo",
                        "--name",
                        name,
                        "--port",
                        str(port),
                    ],
                    workdir / f"{name}.log",
                )
            )
        for i in range(routes):
            write_atomically(
                config / f"{route_name(i)}.yaml",
                s.dump(route_objects(i, blue=blue, green=green, to_green=False)),
            )
        # The files are there before the clock starts: flush them to disk now, so that
        # the kernel's writeback of the benchmark's own setup does not run during it.
        os.sync()
        external, admin, health, xds = free_port(), free_port(), free_port(), free_port()
        started, started_wall = time.perf_counter(), time.time()
        control_plane = [
            sys.executable, "-m", "knative_xds.cli", "--log-level", os.environ.get("BENCH_LOG", "warning"),
            "serve", "--config", str(config), "--xds-port", str(xds), "--xds-address", "127.0.0.1",
            "--external-port", str(external), "--internal-port", str(free_port()),
            "--listen-address", "127.0.0.1", "--health-port", str(health),
            "--state-dir", str(workdir / "state"),
        ]  # fmt: skip
        procs.insert(0, spawn(control_plane, workdir / "knative-xds.log", env=_probe_env(workdir)))
        if envoy:
            # Started alongside, as a gateway that is already up when the control plane
            # (re)starts: it connects while the first state loads.
            boot = workdir / "envoy.yaml"
            boot.write_text(
                bootstrap_yaml(
                    xds_host="127.0.0.1",
                    xds_port=xds,
                    admin_port=admin,
                    delta=delta,
                    max_heap_bytes=envoy_heap(2 * routes),
                )
            )
            envoy_args = [
                str(require_envoy()),
                "-c",
                str(boot),
                "--log-level",
                "warn",
                # Its cluster manager says when every cluster is warm (wait_all_warm).
                "--component-log-level",
                "upstream:info",
                "--disable-hot-restart",
                "--concurrency",
                "2",
            ]
            procs.insert(1, spawn(envoy_args, workdir / "envoy.log"))
        _wait(lambda: ready(health), "knative-xds to load its first state", 600)
        loaded = time.perf_counter()
        yield Stack(
            workdir,
            config,
            external,
            admin,
            health,
            xds,
            procs,
            (blue, green),
            started,
            started_wall,
            loaded,
            control_plane,
        )
    finally:
        stop_all(procs)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def respawn_control_plane(st: Stack) -> None:
    """Start knative-xds again as it was started (after it was killed), logging to the same file."""
    st.procs[0] = spawn(
        st.control_plane, st.workdir / "knative-xds.log", append=True, env=_probe_env(st.workdir)
    )


def spawn(
    args: list[str], log: Path, *, append: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `args` with its output in `log`."""
    out = open(log, "ab" if append else "wb")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def _probe_env(workdir: Path) -> dict[str, str]:
    """knative-xds's environment with its loop-stall probe on, writing into `workdir`."""
    return {**os.environ, LOOP_PROBE_ENV: str(workdir / "loop-probe.jsonl")}


def loop_stall_max_ms(st: Stack, since: float, until: float | None = None) -> float | None:
    """The longest stall of knative-xds's event loop between `since` and `until` (wall
    clock; until now if None), in ms beyond the probe's 5 ms sleep; None if the probe
    wrote nothing for that window.

    The probe writes each 0.1 s period's worst stall; a period counts if it ends within
    the window or is the first to end after it, so the figure may include a stall that
    ended up to 0.1 s before `since` but never misses one inside the window. That last
    period is waited for (up to 3 s: a stalled loop writes late).
    """
    return probe_stall_max_ms(st.loop_probe, since, until)


def probe_stall_max_ms(probe: Path, since: float, until: float | None = None) -> float | None:
    """`loop_stall_max_ms` read from one probe file, for a knative-xds started elsewhere."""
    until = time.time() if until is None else until
    deadline = time.monotonic() + 3
    while True:
        lines = _probe_lines(probe)
        if (lines and lines[-1]["end"] >= until) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    last = next((line["end"] for line in lines if line["end"] >= until), until)
    inside = [line["max_ms"] for line in lines if since <= line["end"] <= last]
    return max(inside) if inside else None


def _probe_lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    # The last line may be half written.
    return [json.loads(x) for x in text.splitlines() if x.endswith("}")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def get_revision(conn: http.client.HTTPConnection, host: str) -> str | None:
    conn.request("GET", "/", headers={"Host": host})
    r = conn.getresponse()
    body = r.read()
    return json.loads(body)["revision"] if r.status == 200 else None


def wait_served(port: int, host: str, want: str, timeout: float) -> float:
    """Poll through Envoy until `host` answers as `want`; return when (perf_counter)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if get_revision(conn, host) == want:
                    return time.perf_counter()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            # A pause between polls: on 2 cores a tight loop would slow the Envoy it measures.
            time.sleep(0.001)
    finally:
        conn.close()
    raise TimeoutError(f"{host} did not answer as {want} within {timeout}s")


def print_table(title: str, rows: dict[str, object]) -> None:
    width = max(len(k) for k in rows)
    print(title)
    for k, v in rows.items():
        print(f"  {k:<{width}}  {v}")
