"""`python -m bench.kube_convergence --json` at a tiny size: it ends cleanly and prints its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.kube_convergence import kingress

ROOT = Path(__file__).resolve().parent.parent


def test_kube_convergence_prints_its_figures_as_the_last_json_line() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.kube_convergence",
            "--json",
            "--ingresses",
            "4",
            "--edits",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["ingresses"], result["edits"]) == (4, 4)
    assert result["edit_to_served"]["n"] == 4
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    # Every edit was found published in the control plane's log.
    assert result["to_published"]["n"] == 4


def test_an_edit_swaps_the_colors_so_both_services_stay_referenced() -> None:
    def services(obj: dict) -> list[str]:
        return [r["http"]["paths"][0]["splits"][0]["serviceName"] for r in obj["spec"]["rules"]]

    assert services(kingress(3, to_green=False)) == ["k00003-blue", "k00003-green"]
    assert services(kingress(3, to_green=True)) == ["k00003-green", "k00003-blue"]
