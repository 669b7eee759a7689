"""`python -m bench.relist --json` with tiny counts: it ends cleanly and prints its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_relist_prints_its_figures_as_the_last_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.relist", "--json", "--objects", "20", "--gateways", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["objects"], result["changed"], result["deleted"]) == (20, 20, 0)
    assert result["relist_s"] > 0
    # The probe ran in the control plane through the relist, and fresh streams got answers.
    assert isinstance(result["max_loop_gap_ms"], float)
    assert result["ping_n"] >= 1
