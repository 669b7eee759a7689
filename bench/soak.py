"""Soak: steady traffic through the real Envoy while the control plane is edited, killed and starved.

A few hundred requests a second go through Envoy to a handful of Routes (two
revisions each, as echo apps on loopback) for the whole run, while:

- traffic is shifted `--shifts` times (percent splits between the two revisions),
  and after each shift the split Envoy serves is sampled and checked;
- the control plane is killed with SIGKILL and started again `--restarts` times
  (each restart's time to re-sync is the time from the new process's start to
  the gateway's stream being connected again with every type acknowledged);
- the source is taken away `--outages` times (the config folder moved away for a
  while, then back), which must change nothing that is served.

Every request counts: a non-200 answer or a connection error is a failure.
The run is bounded in time (`--max-seconds`) and in requests (`--max-requests`).
Target: `failed` = 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from knative_xds import synth as s

from .common import Stack, print_table, respawn_control_plane, route_name, stack, write_atomically

# (blue %, green %): each shift moves to the next; the ends are all-or-nothing.
SPLITS = [(100, 0), (80, 20), (50, 50), (20, 80), (0, 100), (50, 50)]
SAMPLES_PER_SHIFT = 40


@dataclass
class Load:
    """Requests sent from a few threads, paced to a total rate, until stopped or capped."""

    port: int
    hosts: list[str]
    rate: float
    max_requests: int
    sent: int = 0
    failed: int = 0
    failures: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, workers: int = 4) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._worker, args=(w, workers), daemon=True)
            for w in range(workers)
        ]
        for t in threads:
            t.start()
        return threads

    def _worker(self, index: int, workers: int) -> None:
        interval = workers / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = index
        next_at = time.monotonic()
        while not self.stop.is_set():
            with self._lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            host = self.hosts[n % len(self.hosts)]
            n += workers
            try:
                conn.request("GET", "/", headers={"Host": host})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    self._fail(f"{r.status} from {host}")
            except (OSError, http.client.HTTPException) as e:
                self._fail(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up
        conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failed += 1
            self.failures[what] += 1


def objects(i: int, ports: tuple[int, int], split: tuple[int, int]) -> list[dict]:
    name = route_name(i)
    a, b = f"{name}-00001", f"{name}-00002"
    # Both revisions tagged: both clusters stay whatever the split.
    traffic = [s.target(a, split[0], tag="blue"), s.target(b, split[1], tag="green")]
    return [
        s.route(name, traffic),
        s.revision(a),
        s.revision(b),
        s.endpoint_slice(a, ["127.0.0.1"], ports[0]),
        s.endpoint_slice(b, ["127.0.0.1"], ports[1], suffix="b"),
    ]


def sample(port: int, host: str, n: int) -> float:
    """The share of `n` requests to `host` that green answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    green = 0
    try:
        for _ in range(n):
            conn.request("GET", "/", headers={"Host": host})
            r = conn.getresponse()
            body = r.read()
            if r.status == 200 and json.loads(body)["revision"] == "green":
                green += 1
    finally:
        conn.close()
    return green / n


def wait_split(port: int, host: str, green_percent: int, timeout: float = 20) -> float:
    """Sample until the split served is within tolerance of the target; the last share seen."""
    deadline = time.monotonic() + timeout
    share = -1.0
    while time.monotonic() < deadline:
        try:
            share = sample(port, host, SAMPLES_PER_SHIFT)
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            time.sleep(0.05)  # not listening yet (start-up only: the load counts failures)
            continue
        if _close(share, green_percent):
            return share
    return share


def _close(share: float, green_percent: int) -> bool:
    want = green_percent / 100
    if want in (0.0, 1.0):
        return share == want
    return abs(share - want) <= 0.3  # 40 samples of a 50/50 split: ±0.3 is > 3 sigma


def synced(st: Stack) -> bool:
    """The gateway's stream is connected to this control plane and has ACKed every type."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{st.health}/debug/status", timeout=2) as r:
            status = json.loads(r.read())
    except (OSError, ValueError):
        return False
    for stream in status.get("streams", []):
        types = stream.get("types", {})
        if types and all(t.get("acked_version") for t in types.values()):
            return True
    return False


def wait_synced(st: Stack, started: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if synced(st):
            return time.perf_counter() - started
        time.sleep(0.01)
    raise TimeoutError(f"the gateway did not re-sync within {timeout:.0f}s of a restart")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--routes", type=int, default=5, help="Routes under load (2 revisions each)"
    )
    parser.add_argument("--rate", type=float, default=300, help="requests per second, in all")
    parser.add_argument("--shifts", type=int, default=100, help="traffic shifts")
    parser.add_argument("--restarts", type=int, default=5, help="kill -9 + restart cycles")
    parser.add_argument("--outages", type=int, default=2, help="source outages")
    parser.add_argument("--outage-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=300, help="stop the load after this")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    with stack(args.routes, delta=args.delta) as st:
        ports = st.ports()
        hosts = [st.host(i) for i in range(args.routes)]
        for i in range(args.routes):
            write_atomically(
                st.config / f"{route_name(i)}.yaml", s.dump(objects(i, ports, (100, 0)))
            )
        wait_split(st.external, hosts[-1], 0, timeout=60)
        wait_synced(st, time.perf_counter())

        load = Load(st.external, hosts, args.rate, args.max_requests)
        threads = load.run()
        ends = time.monotonic() + args.max_seconds
        shift_log: list[dict] = []
        resyncs: list[float] = []
        outages = 0
        # Restarts and outages are spread evenly between the shifts.
        events = _schedule(args.shifts, args.restarts, args.outages)
        try:
            for n in range(args.shifts):
                if time.monotonic() > ends:
                    break
                i = n % args.routes
                split = SPLITS[(n // args.routes + 1) % len(SPLITS)]
                write_atomically(
                    st.config / f"{route_name(i)}.yaml", s.dump(objects(i, ports, split))
                )
                share = wait_split(st.external, hosts[i], split[1])
                shift_log.append({"route": i, "green_percent": split[1], "green_share": share,
                                  "ok": _close(share, split[1])})  # fmt: skip
                for event in events.get(n, ()):
                    if event == "restart":
                        os.kill(st.procs[0].pid, signal.SIGKILL)
                        st.procs[0].wait()
                        started = time.perf_counter()
                        respawn_control_plane(st)
                        resyncs.append(wait_synced(st, started))
                    else:
                        away = st.config.with_name(st.config.name + ".away")
                        os.replace(st.config, away)
                        time.sleep(args.outage_seconds)
                        os.replace(away, st.config)
                        outages += 1
        finally:
            load.stop.set()
            for t in threads:
                t.join(timeout=15)

    result = {
        "sent": load.sent,
        "failed": load.failed,
        "failures": dict(load.failures),
        "shifts": len(shift_log),
        "shifts_ok": sum(1 for x in shift_log if x["ok"]),
        "restarts": len(resyncs),
        "resync_s": [round(x, 2) for x in resyncs],
        "outages": outages,
        "protocol": "delta" if args.delta else "sotw",
    }
    if args.json:
        print(json.dumps(result))
        return
    by_target: dict[int, list[float]] = {}
    for x in shift_log:
        by_target.setdefault(x["green_percent"], []).append(x["green_share"])
    rows: dict[str, object] = {
        "requests sent": result["sent"],
        "requests failed": f"{result['failed']} {result['failures'] or ''}".strip(),
        "shifts (split as asked)": f"{result['shifts']} ({result['shifts_ok']} within tolerance)",
    }
    for percent, shares in sorted(by_target.items()):
        rows[f"  green {percent:>3}%: shares seen"] = (
            f"min {min(shares):.2f}, max {max(shares):.2f} over {len(shares)} shifts"
        )
    for k, t in enumerate(resyncs, 1):
        rows[f"restart {k}: re-sync"] = f"{t:.2f} s"
    rows["source outages"] = outages
    print_table(f"soak ({result['protocol']}, {args.routes} routes, {args.rate:.0f} req/s)", rows)


def _schedule(shifts: int, restarts: int, outages: int) -> dict[int, list[str]]:
    """After which shift each restart and outage happens: spread evenly, interleaved."""
    events: list[str] = []
    for k in range(max(restarts, outages)):
        events += ["restart"] * (k < restarts) + ["outage"] * (k < outages)
    out: dict[int, list[str]] = {}
    for k, event in enumerate(events, 1):
        at = max(0, min(shifts - 2, k * shifts // (len(events) + 1)))
        out.setdefault(at, []).append(event)
    return out


if __name__ == "__main__":
    main()
