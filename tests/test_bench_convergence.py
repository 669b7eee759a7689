"""`python -m bench.convergence --baseline --json` at a tiny size, and the baseline's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.file_baseline import bootstrap_json, load, scopes_json
from knative_xds.resources import SCOPED_ROUTE
from knative_xds.translate import GatewayConfig

ROOT = Path(__file__).resolve().parent.parent


def test_convergence_with_baseline_prints_both_figures_as_the_last_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.convergence", "--json", "--baseline",
         "--routes", "3", "--edits", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["edit_to_served"]["n"] == 3 and result["baseline"]["n"] == 3
    assert result["p50_ms"] > 0 and result["baseline_p50_ms"] > 0
    assert result["ratio"] == round(result["p50_ms"] / result["baseline_p50_ms"], 2)


def test_the_baseline_serves_every_route_table_inline_and_reads_scopes_from_the_file(
    tmp_path: Path,
) -> None:
    gateway = GatewayConfig(listen_address="127.0.0.1", external_port=18080, internal_port=18081)
    plane = load(4, gateway, (18001, 18002))
    scopes = json.loads(scopes_json(plane, 1))["resources"]
    # Every scope the control plane serves (one per host), each carrying its table,
    # none naming one to fetch.
    assert len(scopes) == len(plane.cache.current().resources[SCOPED_ROUTE]) >= 4
    assert all(s["route_configuration"]["virtual_hosts"] for s in scopes)
    assert not any(s.get("route_configuration_name") for s in scopes)
    boot = json.loads(bootstrap_json(plane, tmp_path, 19901))
    assert "dynamic_resources" not in boot
    text = json.dumps(boot["static_resources"]["listeners"])
    assert str(tmp_path / "srds.json") in text and '"ads"' not in text
    # Clusters carry their endpoints: nothing is fetched over EDS.
    clusters = boot["static_resources"]["clusters"]
    assert all(c.get("type") != "EDS" for c in clusters)
    assert sum(1 for c in clusters if c.get("load_assignment")) >= 8
