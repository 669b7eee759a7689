"""`knative-xds up` scaling revisions (as processes) up, down and to zero, through the real Envoy.

One `up` runs for the module, with a 2 s scale-to-zero grace period. Its echo revisions
answer with their pid, so a test sees which process served, and `up`'s log says each
autoscaler decision. What must hold: a revision at zero answers 200 from a fresh process;
50 concurrent requests to a cold revision all succeed; load above the target starts a
second process and both serve; a scale-down loses no request; after the grace period the
processes are gone and the next request starts one; stopping `up` leaves no process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
import yaml

from knative_xds import synth as s

from .gateway import free_port

GRACE = 2.0
ECHO = ["python", "-m", "knative_xds.local.echo"]


def _revision(name: str, **annotations: str) -> dict:
    return s.revision(name, command=ECHO, annotations=annotations)


def _objects() -> list[dict]:
    at_zero = {"autoscaling.knative.dev/initial-scale": "0"}
    image_only = s.revision("boxed-00001")
    return [
        s.route("cold", [s.target("cold-00001", 100)]),
        _revision("cold-00001", **at_zero),
        s.route("crowd", [s.target("crowd-00001", 100)]),
        _revision("crowd-00001", **at_zero),
        s.route("busy", [s.target("busy-00001", 100)]),
        _revision(
            "busy-00001",
            **at_zero,
            **{"autoscaling.knative.dev/target": "1", "autoscaling.knative.dev/max-scale": "2"},
        ),
        s.route("boxed", [s.target("boxed-00001", 100)]),
        image_only,
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Up:
    """`knative-xds up` as a user runs it; its stderr is collected line by line."""

    def __init__(self, folder: Path) -> None:
        self.external, self.admin = free_port(), free_port()
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "knative_xds.cli",
                "up",
                str(folder),
                "--external-port",
                str(self.external),
                "--internal-port",
                str(free_port()),
                "--admin-port",
                str(self.admin),
                "--state-dir",
                str(folder / "state"),
                "--scale-to-zero-grace",
                str(GRACE),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    def wait_for(self, pattern: str, *, start: int = 0, timeout: float = 20.0) -> re.Match:
        """The first line from `start` on matching `pattern`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines[start:]:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)}")
                self._new_line.wait(left)

    async def wait_for_async(self, pattern: str, **kw) -> re.Match:
        return await asyncio.to_thread(self.wait_for, pattern, **kw)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


UpT = TypeVar("UpT", bound=Up)


def running_up(kind: type[UpT], folder: Path, objects: list[dict]) -> Iterator[UpT]:
    """`up` on a folder holding `objects`, once it says it is up; stopped after."""
    (folder / "apps.yaml").write_text(yaml.safe_dump_all(objects))
    running = kind(folder)
    try:
        running.wait_for("Ctrl-C stops everything", timeout=60)
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Iterator[Up]:
    yield from running_up(Up, tmp_path_factory.mktemp("up"), _objects())


async def _get(session: aiohttp.ClientSession, up: Up, host: str, query: str = "") -> dict:
    url = f"http://127.0.0.1:{up.external}/{query}"
    async with session.get(url, headers={"Host": host}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )


def test_up_names_each_revisions_log_file_and_what_an_image_only_revision_lacks(up):
    log = Path(up.wait_for(r"revision default/cold-00001: output in (\S+)")[1])
    assert log.parent.is_dir()
    line = up.wait_for(r"revision default/boxed-00001 .*has only an image")[0]
    assert "add a `command:`" in "".join(x for x in up.lines if "boxed-00001" in x), line


async def test_a_request_to_a_revision_at_zero_gets_200_from_a_freshly_started_process(up):
    start = len(up.lines)
    async with _session() as session:
        answer = await _get(session, up, "cold.default.example.com")
    assert answer["revision"] == "cold-00001"
    assert _alive(answer["pid"])
    up.wait_for(r"autoscaler: default/cold-00001 0 → 1: a request is waiting", start=start)


async def test_fifty_concurrent_requests_to_a_cold_revision_all_succeed(up):
    async with _session() as session:
        answers = await asyncio.gather(
            *(_get(session, up, "crowd.default.example.com") for _ in range(50))
        )
    assert {a["revision"] for a in answers} == {"crowd-00001"}
    assert len({a["pid"] for a in answers}) == 1  # target 100: one process carries them


async def test_load_above_the_target_starts_a_second_process_and_scale_down_loses_nothing(up):
    start = len(up.lines)
    pids: set[int] = set()
    async with _session() as session:

        async def worker() -> None:
            deadline = time.monotonic() + 15
            while len(pids) < 2 and time.monotonic() < deadline:
                pids.add((await _get(session, up, "busy.default.example.com", "?sleep=0.3"))["pid"])

        await asyncio.gather(*(worker() for _ in range(4)))  # 4 in flight, target 1, max 2
        assert len(pids) == 2, "".join(up.lines[start:])
        up.wait_for(r"autoscaler: default/busy-00001 1 → 2: \d+ in flight", start=start)

        # One request at a time: the autoscaler wants one process; every request meanwhile
        # must be answered, including those sent while the second is drained and stopped.
        mark = len(up.lines)
        stopped = asyncio.ensure_future(
            up.wait_for_async(r"revision default/busy-00001: stopped .*\(pid (\d+)\)", start=mark)
        )
        served = 0
        while not stopped.done():
            await _get(session, up, "busy.default.example.com")
            served += 1
        gone = int((await stopped)[1])
    assert served > 0
    assert gone in pids and not _alive(gone)
    up.wait_for(r"autoscaler: default/busy-00001 2 → 1", start=mark)


async def test_after_the_grace_period_the_processes_are_gone_and_a_request_starts_one(up):
    async with _session() as session:
        first = (await _get(session, up, "cold.default.example.com"))["pid"]
        mark = len(up.lines)
        # (An earlier test's process may be stopped meanwhile: this one is waited for.)
        await up.wait_for_async(
            rf"revision default/cold-00001: stopped .*\(pid {first}\)",
            start=mark,
            timeout=GRACE + 15,
        )
        assert not _alive(first)
        up.wait_for(r"autoscaler: default/cold-00001 1 → 0: no traffic for", start=mark)
        again = await _get(session, up, "cold.default.example.com")
    assert again["revision"] == "cold-00001" and again["pid"] != first and _alive(again["pid"])


def test_stopping_up_stops_every_process_it_started(up):
    started = {int(m) for line in up.lines for m in re.findall(r"is ready \(pid (\d+)\)", line)}
    assert started, "".join(up.lines)
    assert up.stop() == 0
    assert [pid for pid in started if _alive(pid)] == []
