"""Revisions as processes: readiness from the container's probe, and stopping a whole group."""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from knative_xds import synth as s
from knative_xds.local.readiness import Probe, readiness_probe, until_ready
from knative_xds.local.runner import runnable, stop_group
from knative_xds.model import RawObject


def test_an_http_probe_gives_its_path_and_headers_and_a_tcp_probe_or_none_a_connect():
    http = {
        "readinessProbe": {
            "httpGet": {
                "path": "healthz",
                "port": 8080,
                "httpHeaders": [{"name": "X-A", "value": "1"}],
            }
        }
    }
    assert readiness_probe(http) == Probe(path="/healthz", headers=(("X-A", "1"),))
    assert readiness_probe({"readinessProbe": {"tcpSocket": {"port": 8080}}}) == Probe()
    assert readiness_probe({}) == Probe()


def test_a_revision_with_only_an_image_is_not_runnable():
    assert runnable(RawObject.from_dict(s.revision("boxed-00001"))) is None


async def _sleeper() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", start_new_session=True
    )


async def test_an_http_probe_is_ready_only_once_its_path_answers_2xx():
    seen: list[tuple[str, str]] = []

    async def health(request: web.BaseRequest) -> web.Response:
        seen.append((request.path, request.headers.get("X-A", "")))
        return web.Response(status=200 if len(seen) >= 3 else 503)

    runner = web.ServerRunner(web.Server(health))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proc = await _sleeper()
    try:
        await until_ready(port, proc, Probe(path="/healthz", headers=(("X-A", "1"),)))
        assert seen == [("/healthz", "1")] * 3  # two 503s, then the 200 that made it ready
    finally:
        await stop_group(proc)
        await runner.cleanup()


async def test_a_process_that_exits_before_it_is_ready_is_reported_not_waited_for():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    try:
        await until_ready(1, proc, Probe())
    except RuntimeError as e:
        assert "exited with code 3" in str(e)
    else:
        raise AssertionError("until_ready returned for a process that exited")


async def test_stopping_a_process_stops_what_it_started_in_its_group():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n",
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    child = int(await proc.stdout.readline())
    await stop_group(proc, grace=2)
    assert proc.returncode is not None
    # The grandchild was killed with the group; it is reparented, so poll until reaped.
    async with asyncio.timeout(5):
        while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
            await asyncio.sleep(0.05)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
