"""`python -m bench.replicas --json` with tiny counts, and how its gateways spot an edit.

Two `serve --kubernetes` replicas and then one, each against its own fake API
server, with six gateways in two client processes: the run must end cleanly and
print its figures as the last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from bench.ingress_ready import EDIT_HEADER
from bench.reconnect import read_counts
from bench.replica_clients import Gateway, edited_kingress, marker
from knative_xds.resources import ROUTE

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = (
    "all_synced_s",
    "edit_p50_ms",
    "edit_p99_ms",
    "edit_ready_p50_ms",
    "replica_storm_cpu_s_max",
    "replica_edit_cpu_ms_max",
    "replica_rss_mb_max",
    "loop_stall_max_ms",
    "clients_cpu_s",
)


def test_replicas_json_last_line_holds_both_runs_figures():
    done = subprocess.run(
        [sys.executable, "-m", "bench.replicas", "--json", "--replicas", "2", "--compare", "1",
         "--gateways", "6", "--ingresses", "3", "--edits", "3", "--processes", "2",
         "--timeout", "30"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one = result["compare"]
    assert (result["replicas"], one["replicas"], result["compare_replicas"]) == (2, 1, 1)
    for run in (result, one):
        for key in NUMBERS:
            assert isinstance(run[key], int | float), (key, run)
        assert 0 < run["all_synced_s"] < 30 and run["edit_p50_ms"] > 0
        assert run["edits"] == 3 and run["api_edits"]["status_patches"] >= 3
    # The gateways are split between the replicas, and each replica watches on its own.
    assert [p["gateways"] for p in result["per_replica"]] == [3, 3]
    assert result["api_start"]["watches_open_peak"] == 2 * one["api_start"]["watches_open_peak"]
    # It says that the replicas shared this machine's cores.
    assert f"share {result['cores']} cores" in result["note"]


def _route_response(value: str) -> bytes:
    header = base_pb2.HeaderValueOption(header={"key": EDIT_HEADER, "value": value})
    host = rc.VirtualHost(name="h", domains=["*"], request_headers_to_add=[header])
    table = route_pb2.RouteConfiguration(name="external/bench/k00001", virtual_hosts=[host])
    response = discovery_pb2.DiscoveryResponse(type_url=ROUTE, version_info="v", nonce="1")
    response.resources.add().Pack(table)
    return response.SerializeToString()


def test_a_gateway_reports_each_edit_marker_once_and_never_edit_zero():
    seen: list[int] = []
    gateway = Gateway("gw-0", {}, {})
    gateway.on_edit = lambda edit, _at: seen.append(edit)
    for value in (marker(0), marker(7), marker(7), marker(12)):
        raw = _route_response(value)
        assert read_counts(raw)[0] == ROUTE
        gateway._edits(raw)
    assert seen == [7, 12]


def test_an_edited_kingress_carries_its_marker_in_the_header_its_path_appends():
    path = edited_kingress(2, 41)["spec"]["rules"][0]["http"]["paths"][0]
    assert path["appendHeaders"] == {EDIT_HEADER: "kx-edit-000041"}
