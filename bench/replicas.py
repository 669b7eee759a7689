"""Several control-plane replicas off one API server, each serving a share of the gateways.

As deploy/ runs it: R `knative-xds serve --kubernetes` processes, each watching
the same (fake) Kubernetes API server on its own; the API is the only state they
share, no replica talks to another, and the holder of a Lease writes KIngress
status. The API server is the project's fake one (tests/fake_kube_api.py: the
real list/watch and status protocol over HTTP on loopback), in the benchmark's
own process. The gateways are raw ADS clients subscribing as Envoy does (as in
bench/reconnect.py), in client processes of their own, gateway i on replica
i mod R.

Figures, for R replicas and, in the same run, for `--compare` replicas (1 by
default) serving the same gateways:

- all_synced_s: the gateways open their streams at once → every one holds the
  whole snapshot;
- edit_p50_ms / edit_p99_ms: one KIngress edit written to the API server →
  every gateway has been sent it (a marker in a header the edit sets, found in
  the route table's bytes); edit_ready_p50_ms: → Ready in the status the Lease
  holder writes (it sees only its own gateways);
- per replica: CPU seconds during the storm, CPU ms per edit, RSS with the
  state loaded and no gateway, RSS with its gateways, loop stall (the
  KNATIVE_XDS_LOOP_PROBE probe);
- the API server's load: watches opened and open at once, lists, status and
  Lease requests, its process's CPU.

Everything shares this machine's cores: with few cores the replicas compete
for them, so wall-clock figures for R > 1 are no faster than for 1; what R
replicas buy shows in each replica's CPU and memory (see bench/README.md).

The replicas' processes are started in bench/replica_procs.py, the gateways'
client processes run bench/replica_clients.py.

    python -m bench.replicas --replicas 4 --gateways 1000 --ingresses 1000 [--delta] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from knative_xds.resources import PUSH_ORDER, short
from tests.fake_kube_api import FakeApiServer

from .common import percentile, print_table, probe_stall_max_ms, summary
from .ingress_ready import backend, generation_of, is_ready
from .replica_clients import client_process, edited_kingress, gateway_names
from .replica_procs import (
    Replica,
    api_load,
    start_replica,
    stop_replicas,
    wait_ready,
    write_kubeconfig,
)

# -- the benchmark --------------------------------------------------------------------


async def _line(proc: asyncio.subprocess.Process, what: str) -> str:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a client process exited before {what} (exit code {await proc.wait()})")
    return line.decode()


async def _tell(procs: Sequence[asyncio.subprocess.Process], text: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(text.encode())
        await proc.stdin.drain()


def _expected(status: dict, names: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Resources per type a gateway must hold: the snapshot's, or the names it asks for."""
    counts = {
        t: len(names[t]) if t in names else status["resources"].get(short(t), 0) for t in PUSH_ORDER
    }
    return {t: n for t, n in counts.items() if n}


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


async def _spawn_clients(
    replicas: Sequence[Replica], gateways: int, per_replica: int, job: dict
) -> list[asyncio.subprocess.Process]:
    """`per_replica` client processes for each replica; gateway i on replica i mod R."""
    procs: list[asyncio.subprocess.Process] = []
    for r in replicas:
        nodes = [f"gw-{i}" for i in range(r.index, gateways, len(replicas))]
        for k in range(per_replica):
            if not nodes[k::per_replica]:
                continue
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.replicas", "--client-process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            # Source addresses apart per process (bench/spread.py).
            first = len(procs) * 1000
            procs.append(proc)
            own = {**job, "port": r.xds, "nodes": nodes[k::per_replica], "first": first}
            await _tell([proc], json.dumps(own) + "\n")
    return procs


def _self_cpu() -> float:
    """This process's CPU seconds: the fake API server's, and the benchmark's bookkeeping."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def _when(api: FakeApiServer, check: Callable[[], bool]) -> float:
    await api.wait_for(check)
    return time.time()


async def _edits(
    api: FakeApiServer, clients: Sequence[asyncio.subprocess.Process], ingresses: int, edits: int
) -> tuple[list[float], list[float]]:
    """One KIngress edit at a time: ms until every gateway has it, and until it is Ready."""
    held_ms: list[float] = []
    ready_ms: list[float] = []
    for n in range(1, edits + 1):
        i = (n * 7919) % ingresses  # spread over the KIngresses
        generation = generation_of(api, i) + 1
        t0 = time.time()
        api.put(edited_kingress(i, n))
        ready = asyncio.create_task(_when(api, lambda i=i, g=generation: is_ready(api, i, g)))
        async with asyncio.timeout(60):
            got = [json.loads(await _line(c, f"every gateway held edit {n}")) for c in clients]
            ready_at = await ready
        if any(g["edit"] != n for g in got):
            raise RuntimeError(f"edit {n}: client processes reported {got}")
        held_ms.append((max(g["at"] for g in got) - t0) * 1000)
        ready_ms.append((ready_at - t0) * 1000)
    return held_ms, ready_ms


async def scenario(
    *, replicas: int, gateways: int, ingresses: int, edits: int, processes: int,
    timeout: float, delta: bool, workdir: Path,
) -> dict:  # fmt: skip
    """Start the API server and R replicas, connect the gateways at once, then edit."""
    api = FakeApiServer()
    await api.start()
    reps: list[Replica] = []
    clients: list[asyncio.subprocess.Process] = []
    try:
        for i in range(ingresses):
            for obj in backend(i, 9):  # nothing listens there: no request is sent
                api.put(obj)
            api.put(edited_kingress(i, 0))
        kubeconfig = write_kubeconfig(workdir, api.url)
        reps = [start_replica(k, workdir, kubeconfig) for k in range(replicas)]
        await wait_ready(reps, timeout)
        names = gateway_names(ingresses)
        expected = _expected(await asyncio.to_thread(reps[0].status), names)
        per = max(1, processes // replicas)
        job = {"ingresses": ingresses, "expected": expected, "timeout": timeout, "delta": delta}
        clients = await _spawn_clients(reps, gateways, per, job)
        for c in clients:
            await _line(c, "getting ready")
        start_load = api_load(api)
        idle = [r.memory_kb() for r in reps]
        cpu0, api0, seen0 = [r.cpu_s() for r in reps], _self_cpu(), len(api.seen)
        go = time.time()
        await _tell(clients, "go\n")
        reports = [json.loads(await _line(c, "holding the snapshot")) for c in clients]
        synced = [t - go for report in reports for t in report["synced"]]
        storm_end = go + max(synced)
        cpu1, api1, storm_load = [r.cpu_s() for r in reps], _self_cpu(), api_load(api, seen0)
        held = [r.memory_kb() for r in reps]
        async with asyncio.timeout(timeout):
            await api.wait_for(lambda: all(is_ready(api, i, 1) for i in range(ingresses)))
        all_ready_s = time.time() - go
        cpu2, api2, seen2 = [r.cpu_s() for r in reps], _self_cpu(), len(api.seen)
        e0 = time.time()
        held_ms, ready_ms = await _edits(api, clients, ingresses, edits)
        e1 = time.time()
        cpu3, api3, edit_load = [r.cpu_s() for r in reps], _self_cpu(), api_load(api, seen2)
        peaks = [r.memory_kb() for r in reps]
        await _tell(clients, "stop\n")
        for c in clients:
            await _line(c, "closing its streams")
            if await c.wait() != 0:
                raise RuntimeError(f"a client process ended with exit code {c.returncode}")
        stalls = [
            max(
                (s for s in (
                    await asyncio.to_thread(probe_stall_max_ms, r.probe, go, storm_end),
                    await asyncio.to_thread(probe_stall_max_ms, r.probe, e0, e1),
                ) if s is not None),
                default=None,
            )
            for r in reps
        ]  # fmt: skip
    finally:
        for c in clients:
            if c.returncode is None:
                c.kill()
                await c.wait()
        await stop_replicas(reps)
        await api.close()
    per_replica = [
        {
            "replica": r.index,
            "gateways": len(range(r.index, gateways, replicas)),
            "storm_cpu_s": round(cpu1[k] - cpu0[k], 2),
            "edit_cpu_ms": round((cpu3[k] - cpu2[k]) * 1000 / max(1, edits), 2),
            "rss_idle_mb": _mb(idle[k]["VmRSS"]),
            "rss_mb": _mb(held[k]["VmRSS"]),
            "peak_rss_mb": _mb(peaks[k]["VmHWM"]),
            "loop_stall_max_ms": stalls[k],
        }
        for k, r in enumerate(reps)
    ]
    held_summary, ready_summary = summary(held_ms), summary(ready_ms)
    known_stalls = [s for s in stalls if s is not None]
    return {
        "replicas": replicas,
        "protocol": "delta" if delta else "sotw",
        "gateways": gateways,
        "ingresses": ingresses,
        "edits": edits,
        "client_processes": len(clients),
        "all_synced_s": round(max(synced), 3),
        "median_synced_s": round(percentile(synced, 50), 3),
        "all_ready_s": round(all_ready_s, 3),
        "edit_p50_ms": held_summary["p50_ms"],
        "edit_p99_ms": held_summary["p99_ms"],
        "edit_max_ms": held_summary["max_ms"],
        "edit_ready_p50_ms": ready_summary["p50_ms"],
        "edit_ready_p99_ms": ready_summary["p99_ms"],
        "replica_storm_cpu_s_max": max(p["storm_cpu_s"] for p in per_replica),
        "replica_storm_cpu_s_sum": round(sum(p["storm_cpu_s"] for p in per_replica), 2),
        "replica_edit_cpu_ms_max": max(p["edit_cpu_ms"] for p in per_replica),
        "replica_rss_mb_max": max(p["rss_mb"] for p in per_replica),
        "replica_peak_rss_mb_max": max(p["peak_rss_mb"] for p in per_replica),
        "loop_stall_max_ms": max(known_stalls) if known_stalls else None,
        "clients_cpu_s": round(sum(r["cpu_s"] for r in reports), 2),
        "api_start": start_load.as_dict(),
        "api_storm": {**storm_load.as_dict(), "cpu_s": round(api1 - api0, 2)},
        "api_edits": {**edit_load.as_dict(), "cpu_s": round(api3 - api2, 2)},
        "per_replica": per_replica,
    }


def note(cores: int, replicas: int, processes: int) -> str:
    return (
        f"{replicas} replicas, {processes} client processes and the API server share {cores} "
        "cores: wall-clock figures include waiting for a core; per-replica CPU and memory "
        "are what a replica on its own core would need"
    )


async def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="knative-xds-replicas-"))
    try:
        counts = [args.replicas] + ([args.compare] if args.compare else [])
        results = []
        sizes = {
            "gateways": args.gateways,
            "ingresses": args.ingresses,
            "edits": args.edits,
            "processes": args.processes,
            "timeout": args.timeout,
            "delta": args.delta,
        }
        for r in counts:
            folder = workdir / f"r{r}-{len(results)}"
            folder.mkdir()
            results.append(await scenario(replicas=r, workdir=folder, **sizes))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    main, *others = results
    cores = os.cpu_count() or 1
    out = {**main, "cores": cores, "note": note(cores, args.replicas, main["client_processes"])}
    if others:
        other = others[0]
        out["compare"] = other
        for key in COMPARED:
            out[f"compare_{key}"] = other[key]
    return out


COMPARED = (
    "replicas",
    "all_synced_s",
    "edit_p50_ms",
    "edit_p99_ms",
    "replica_storm_cpu_s_max",
    "replica_edit_cpu_ms_max",
    "replica_rss_mb_max",
    "loop_stall_max_ms",
)
ROWS = {
    "gateways connect at once → all hold the snapshot": ("all_synced_s", "s"),
    "KIngress edit → every gateway has it, p50": ("edit_p50_ms", "ms"),
    "KIngress edit → every gateway has it, p99": ("edit_p99_ms", "ms"),
    "KIngress edit → Ready (Lease holder's view), p50": ("edit_ready_p50_ms", "ms"),
    "busiest replica's CPU in the storm": ("replica_storm_cpu_s_max", "s"),
    "all replicas' CPU in the storm": ("replica_storm_cpu_s_sum", "s"),
    "busiest replica's CPU per edit": ("replica_edit_cpu_ms_max", "ms"),
    "largest replica RSS with its gateways": ("replica_rss_mb_max", "MB"),
    "longest replica loop stall": ("loop_stall_max_ms", "ms"),
    "clients' CPU in the storm": ("clients_cpu_s", "s"),
}


def print_results(out: dict) -> None:
    runs = [out] + ([out["compare"]] if "compare" in out else [])
    head = " | ".join(f"{r['replicas']} replica(s)" for r in runs)
    rows = {"": head}
    for label, (key, unit) in ROWS.items():
        rows[label] = " | ".join(f"{r[key]} {unit}" for r in runs)
    for r in runs:
        api = r["api_storm"]
        rows[f"API server, {r['replicas']} replica(s)"] = (
            f"{r['api_start']['lists']} lists and {api['watches_open_peak']} watches open at "
            f"start, {api['status_patches']} status patches in the storm, "
            f"{r['api_edits']['status_patches']} over {r['edits']} edits"
        )
    print_table(f"replicas: {out['gateways']} gateways, {out['ingresses']} KIngresses", rows)
    print(f"note: {out['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--ingresses", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument(
        "--compare", type=int, default=1, help="also run with this many replicas (0: don't)"
    )
    parser.add_argument("--delta", action="store_true", help="Delta ADS instead of SotW")
    parser.add_argument("--processes", type=int, default=4, help="client processes in all")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for sync")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        asyncio.run(client_process(json.loads(sys.stdin.readline())))
        return
    if args.replicas < 1 or args.gateways < 1 or args.ingresses < 1 or args.edits < 1:
        parser.error("--replicas, --gateways, --ingresses and --edits must be at least 1")
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        print_results(out)


if __name__ == "__main__":
    main()
