"""`python -m bench.reconnect --json` with tiny counts, and the pieces it stands on.

The benchmark runs knative-xds as a process and its gateways in client processes;
70 gateways from one process are more than the server accepts from one address
(64), so this also runs them through more than one relay address.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from bench.reconnect import read_counts
from knative_xds.admin import loop_probe
from knative_xds.resources import CLUSTER

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("all_synced_s", "server_cpu_s", "clients_cpu_s", "loop_stall_max_ms")


def _run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.reconnect", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # It ends cleanly: no stream's error printed on the way out.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("protocol", "args"),
    [
        ("sotw", ("--gateways", "70", "--revisions", "4", "--processes", "1")),
        ("delta", ("--gateways", "6", "--revisions", "4", "--delta")),
    ],
)
def test_reconnect_json_last_line_holds_its_figures(protocol: str, args: tuple[str, ...]):
    result = _run(*args)
    assert result["protocol"] == protocol
    assert result["gateways"] == int(args[1])
    for key in KEYS:
        assert isinstance(result[key], int | float), (key, result)
    assert 0 < result["first_synced_s"] <= result["all_synced_s"] < 30
    assert result["clients_cpu_s"] > 0
    assert result["server_cpu_s"] >= 0 and result["loop_stall_max_ms"] >= 0


def test_read_counts_counts_resources_and_reads_the_header_of_a_response():
    clusters = [any_pb2.Any() for _ in range(3)]
    for i, packed in enumerate(clusters):
        packed.Pack(cluster_pb2.Cluster(name=f"c{i}"))
    sotw = discovery_pb2.DiscoveryResponse(
        version_info="v7", type_url=CLUSTER, nonce="4", resources=clusters
    )
    assert read_counts(sotw.SerializeToString()) == (CLUSTER, "v7", "4", 3, 0)
    delta = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v8", type_url=CLUSTER, nonce="5", removed_resources=["a", "b"]
    )
    delta.resources.add(name="c0", resource=clusters[0])
    assert read_counts(delta.SerializeToString()) == (CLUSTER, "v8", "5", 1, 2)


def test_loop_probe_reports_a_blocking_call_as_a_stall(tmp_path: Path):
    out = tmp_path / "probe.jsonl"

    async def main() -> None:
        task = asyncio.create_task(loop_probe.probe(out, interval=0.005, every=0.05))
        await asyncio.sleep(0.1)
        time.sleep(0.2)  # the loop is blocked: the probe's next turn is 200 ms late
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(main())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    worst = max(lines, key=lambda line: line["max_ms"])
    assert 190 <= worst["max_ms"] < 1000
    # The other periods saw the loop turning on time, as the stall is the outlier.
    assert min(line["max_ms"] for line in lines) < 50
