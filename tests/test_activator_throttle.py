"""`containerConcurrency` held by the activator, against revisions run as real processes.

Each revision here is a small app that answers with its pid and how many requests it
held when this one arrived (its own count, so what the test sees is what the process
saw). The activator's throttle must keep that count at the limit, spread requests over
the processes, queue the rest (full: 503), and give up on a wait past timeoutSeconds (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from knative_xds import synth as s
from knative_xds.local.activator import LocalActivator
from knative_xds.local.autoscaler import Autoscaler, Load, ScaleSpec
from knative_xds.local.runner import LocalRevisions
from knative_xds.local.throttle import Throttle, least_loaded
from knative_xds.model import ObjectKey, RawObject
from tests.helpers import until

KEY = ObjectKey("default", "narrow-00001")
HEADERS = {"Knative-Serving-Revision": KEY.name, "Knative-Serving-Namespace": KEY.namespace}

# Counts the requests it holds; `?sleep=SECONDS` holds one that long, its head sent at once
# (so only the body is slow: a revision's timeoutSeconds bounds the wait for the head).
COUNTING_APP = r"""
import asyncio, json, os
from aiohttp import web

held = 0

async def handle(request):
    global held
    held += 1
    seen = held
    out = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        await out.prepare(request)
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        await out.write(json.dumps({"pid": os.getpid(), "held": seen}).encode())
    finally:
        held -= 1
    await out.write_eof()
    return out

app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
"""


def _revision(*, concurrency: int, processes: int, timeout: int = 30) -> RawObject:
    body = s.revision(
        KEY.name,
        command=[sys.executable, "-c", COUNTING_APP],
        timeout=timeout,
        annotations={
            "autoscaling.knative.dev/initial-scale": str(processes),
            "autoscaling.knative.dev/max-scale": str(processes),
        },
    )
    body["spec"]["containerConcurrency"] = concurrency
    return RawObject.from_dict(body, "test.yaml")


@contextlib.asynccontextmanager
async def throttled(
    tmp_path: Path, raw: RawObject, *, queue_depth: int = 1000
) -> AsyncIterator[tuple[LocalActivator, Throttle, str]]:
    throttle: Throttle | None = None

    def publish(changes) -> None:  # as `up` does: a process came or went, waiters look
        if throttle is not None:
            throttle.changed()

    revisions = LocalRevisions(publish, log_dir=tmp_path, announce=lambda text: None)
    throttle = Throttle(
        lambda key: revisions.specs()[key].container_concurrency,
        lambda key: revisions.running().get(key, []),
        revisions.wake,
    )
    activator = LocalActivator(revisions, queue_depth=queue_depth, throttle=throttle)
    try:
        await revisions.start_all(revisions.observe({("Revision", KEY): raw}))
        port = await activator.start()
        yield activator, throttle, f"http://127.0.0.1:{port}"
    finally:
        await activator.close()
        await revisions.close()


async def _get(client: aiohttp.ClientSession, url: str, sleep: float) -> tuple[int, dict | str]:
    async with client.get(f"{url}/?sleep={sleep}", headers=HEADERS) as r:
        return r.status, (await r.json(content_type=None) if r.status == 200 else await r.text())


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def test_the_least_loaded_process_with_a_free_slot_is_chosen_the_oldest_of_equals():
    assert least_loaded([81, 82], {}, 1) == 81
    assert least_loaded([81, 82], {81: 1}, 1) == 82
    assert least_loaded([81, 82], {81: 1, 82: 1}, 1) is None
    assert least_loaded([81, 82, 83], {81: 2, 82: 1, 83: 2}, 3) == 82


async def test_a_limit_of_one_with_two_processes_never_puts_two_requests_in_one(tmp_path, client):
    async with throttled(tmp_path, _revision(concurrency=1, processes=2)) as (_, throttle, url):
        started = time.monotonic()
        answers = await asyncio.gather(*(_get(client, url, 0.2) for _ in range(8)))
        took = time.monotonic() - started
        assert throttle.in_flight(KEY) == 0  # every slot given back
    assert {status for status, _ in answers} == {200}, answers
    assert {a["held"] for _, a in answers} == {1}, answers
    pids = [a["pid"] for _, a in answers]
    assert len(set(pids)) == 2, pids  # spread over both processes
    assert took >= 4 * 0.2 - 0.05, took  # two slots, eight requests: four rounds


async def test_without_a_limit_the_same_load_puts_several_requests_in_one_process(tmp_path, client):
    # The counting app sees overlap when nothing throttles: the test above can fail.
    async with throttled(tmp_path, _revision(concurrency=0, processes=1)) as (_, _t, url):
        answers = await asyncio.gather(*(_get(client, url, 0.3) for _ in range(4)))
    assert max(a["held"] for _, a in answers) > 1, answers


async def test_past_the_slots_requests_queue_and_a_full_queue_answers_503(tmp_path, client):
    raw = _revision(concurrency=1, processes=1)
    async with throttled(tmp_path, raw, queue_depth=1) as (activator, throttle, url):
        first = asyncio.ensure_future(_get(client, url, 1.0))
        await until(lambda: throttle.in_flight(KEY) == 1, "the first request's slot")
        second = asyncio.ensure_future(_get(client, url, 0))
        await until(lambda: activator.waiting(KEY) == 1, "the second request to queue")
        status, text = await _get(client, url, 0)
        assert status == 503 and "containerConcurrency (1)" in text and "queue is full" in text
        assert (await first)[0] == 200
        status, answer = await second  # served once the first gave its slot back
    assert status == 200 and answer["held"] == 1, answer


async def test_a_request_waiting_for_a_slot_past_timeout_seconds_gets_504(tmp_path, client):
    raw = _revision(concurrency=1, processes=1, timeout=1)
    async with throttled(tmp_path, raw) as (_, throttle, url):
        first = asyncio.ensure_future(_get(client, url, 2.5))
        await until(lambda: throttle.in_flight(KEY) == 1, "the first request's slot")
        started = time.monotonic()
        status, text = await _get(client, url, 0)
        waited = time.monotonic() - started
        assert status == 504 and "timeoutSeconds (1 s)" in text, text
        assert 0.9 <= waited < 2.0, waited
        assert (await first)[0] == 200  # the one holding the slot is not cut short


async def test_the_autoscaler_reads_a_throttled_revisions_load_from_the_activator():
    spec = ScaleSpec(container_concurrency=1, max_scale=5)
    other = ObjectKey("default", "wide-00001")

    class Revisions:
        counts = {KEY: 1, other: 1}

        def specs(self):
            return {KEY: spec, other: ScaleSpec()}

        def count(self, key):
            return self.counts[key]

        def scale(self, key, count):
            self.counts[key] = count

    async def envoy() -> dict[str, Load]:
        # Envoy sees one request at the activator for each: the held counts must win.
        return {"default/narrow-00001": Load(1, 1), "default/wide-00001": Load(1, 1)}

    revisions = Revisions()
    scaler = Autoscaler(revisions, envoy, grace=30, held=lambda key: Load(3, 4))
    await scaler.tick()
    assert revisions.counts == {KEY: 3, other: 1}  # 3 held at a limit of 1 each


def test_up_takes_an_activator_queue_size_of_one_or_more(capsys):
    from knative_xds.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["up", "x"]).activator_queue == 1000
    assert parser.parse_args(["up", "x", "--activator-queue", "3"]).activator_queue == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "x", "--activator-queue", "0"])
    assert "'0' is not a whole number of 1 or more" in capsys.readouterr().err
