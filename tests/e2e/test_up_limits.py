"""`knative-xds up`'s limits through the real Envoy: a full queue, a cold start past
`timeoutSeconds`, and `containerConcurrency` held by the activator.

One `up` runs for the module with `--activator-queue 4`, so a fifth request for a
revision that is still starting finds the queue full. The revisions that start slowly
sleep before running the echo app. The throttled revision is a small app that answers
with its pid and how many requests it held when this one arrived, so the test sees
what each process saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest

from knative_xds import synth as s
from knative_xds.envoy import admin_get
from knative_xds.local.autoscaler import parse_clusters

from .gateway import free_port
from .test_up_scaling import Up, running_up

# The echo app, after `SLOW` seconds of starting.
SLOW = 3
SLOW_ECHO = [
    "python",
    "-c",
    f"import runpy, sys, time; time.sleep({SLOW}); sys.argv = ['echo']; "
    "runpy.run_module('knative_xds.local.echo', run_name='__main__')",
]
COUNTING_APP = r"""
import asyncio, json, os
from aiohttp import web

held = 0

async def handle(request):
    global held
    held += 1
    seen = held
    try:
        await asyncio.sleep(float(request.query.get("sleep", "0")))
    finally:
        held -= 1
    return web.Response(text=json.dumps({"pid": os.getpid(), "held": seen}))

app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
"""
QUEUE = 4
AT_ZERO = {"autoscaling.knative.dev/initial-scale": "0"}


def _objects() -> list[dict]:
    late = s.revision("late-00001", command=SLOW_ECHO, timeout=1, annotations=AT_ZERO)
    queued = s.revision("queued-00001", command=SLOW_ECHO, timeout=30, annotations=AT_ZERO)
    narrow = s.revision(
        "narrow-00001",
        command=["python", "-c", COUNTING_APP],
        annotations={"autoscaling.knative.dev/max-scale": "2"},
    )
    narrow["spec"]["containerConcurrency"] = 1
    return [
        s.route("late", [s.target("late-00001", 100)]),
        late,
        s.route("queued", [s.target("queued-00001", 100)]),
        queued,
        s.route("narrow", [s.target("narrow-00001", 100)]),
        narrow,
    ]


class LimitedUp(Up):
    """`up` with a one-request activator queue and a grace period no test waits out."""

    def __init__(self, folder) -> None:
        self.external, self.admin = free_port(), free_port()
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "knative_xds.cli", "up", str(folder)),
                *("--external-port", str(self.external), "--internal-port", str(free_port())),
                *("--admin-port", str(self.admin), "--state-dir", str(folder / "state")),
                *("--scale-to-zero-grace", "120", "--activator-queue", str(QUEUE)),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Iterator[LimitedUp]:
    yield from running_up(LimitedUp, tmp_path_factory.mktemp("up"), _objects())


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )


async def _get(session, up: Up, host: str, query: str = "") -> tuple[int, str]:
    url = f"http://127.0.0.1:{up.external}/{query}"
    async with session.get(url, headers={"Host": host}) as r:
        return r.status, await r.text()


def _hosts(up: Up, revision: str) -> dict:
    status = json.loads(admin_get(up.admin, "/clusters?format=json", timeout=2.0))
    return parse_clusters(status).get(f"default/{revision}", {})


async def _until_active(up: Up, revision: str, count: int) -> None:
    """Until Envoy holds `count` requests for the revision (at the activator)."""
    deadline = time.monotonic() + 10
    while sum(h.active for h in (await asyncio.to_thread(_hosts, up, revision)).values()) < count:
        assert time.monotonic() < deadline, f"Envoy never held {count} for {revision}"
        await asyncio.sleep(0.05)


async def test_a_full_queue_through_envoy_answers_503_with_the_reason(up):
    async with _session() as session:
        waiting = [
            asyncio.ensure_future(_get(session, up, "queued.default.example.com"))
            for _ in range(QUEUE)
        ]
        await _until_active(up, "queued-00001", QUEUE)  # they wait for its cold start
        status, text = await _get(session, up, "queued.default.example.com")
        assert status == 503, text
        assert "revision default/queued-00001 is starting and its activator queue is full" in text
        answers = await asyncio.gather(*waiting)
    assert {status for status, _ in answers} == {200}, answers
    assert {json.loads(text)["revision"] for _, text in answers} == {"queued-00001"}


async def test_a_cold_start_past_timeout_seconds_through_envoy_answers_504(up):
    async with _session() as session:
        started = time.monotonic()
        status, text = await _get(session, up, "late.default.example.com")
        took = time.monotonic() - started
    assert status == 504, text
    assert 0.9 <= took < SLOW, took  # given up at timeoutSeconds, not once the process was ready
    # Envoy's stream idle timeout is the revision's timeoutSeconds too, and its clock starts
    # first (the activator's starts once Envoy has passed the request on), so the 504 is
    # Envoy's; without the gateway's timer it is the activator's (tests/test_activator*.py).
    assert text == "stream timeout" or "within its timeoutSeconds (1 s)" in text, text


async def test_a_container_concurrency_of_one_holds_through_envoy_on_each_process(up):
    start = len(up.lines)
    async with _session() as session:
        answers = []
        deadline = time.monotonic() + 20
        # Waves of QUEUE at once (one process holds 1, the rest fit the queue), each held
        # 0.3 s: the autoscaler sees them held by the activator (limit 1 each) and starts
        # a second process (max-scale 2).
        while len({json.loads(t)["pid"] for _, t in answers}) < 2:
            assert time.monotonic() < deadline, "".join(up.lines[start:])
            answers += await asyncio.gather(
                *(
                    _get(session, up, "narrow.default.example.com", "?sleep=0.3")
                    for _ in range(QUEUE)
                )
            )
    assert {status for status, _ in answers} == {200}, answers
    assert {json.loads(t)["held"] for _, t in answers} == {1}, answers
    up.wait_for(r"autoscaler: default/narrow-00001 1 → 2: \d+ in flight", start=start)
    # The activator stays the revision's endpoint: Envoy never sends to a process itself.
    ready = [int(p) for line in up.lines for p in _ready_ports(line, "narrow-00001")]
    assert len(ready) == 2, up.lines
    assert set(_hosts(up, "narrow-00001")).isdisjoint(ready)


def _ready_ports(line: str, revision: str) -> list[str]:
    return re.findall(rf"revision default/{revision}: 127\.0\.0\.1:(\d+) is ready", line)
