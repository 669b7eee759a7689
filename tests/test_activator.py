"""The local activator on loopback, against real upstreams: the echo app or a small aiohttp app.

The revisions are a fake whose `wake` the test controls (start an upstream, hold, fail),
so each case says exactly what the activator was given and what it must answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from knative_xds.local.activator import LocalActivator, end_to_end, forwarded
from knative_xds.local.echo import bound_port, serve_echo
from knative_xds.model import ObjectKey
from tests.helpers import until

KEY = ObjectKey("default", "sleepy-00001")
FOR_KEY = {"Knative-Serving-Revision": KEY.name, "Knative-Serving-Namespace": KEY.namespace}
MB = 1024 * 1024


@dataclass
class FakeRevisions:
    """`wake` runs `start` (once per call); the test sees every key asked for."""

    start: Callable[[], Awaitable[int]]
    timeout: float = 300.0
    woken: list[ObjectKey] = field(default_factory=list)

    async def wake(self, key: ObjectKey) -> int:
        self.woken.append(key)
        return await self.start()

    def timeout_seconds(self, key: ObjectKey) -> float:
        return self.timeout


@contextlib.asynccontextmanager
async def running(revisions: FakeRevisions, **options) -> AsyncIterator[tuple[LocalActivator, str]]:
    activator = LocalActivator(revisions, **options)
    port = await activator.start()
    try:
        yield activator, f"http://127.0.0.1:{port}"
    finally:
        await activator.close()


@contextlib.asynccontextmanager
async def app_on_loopback(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await serve_echo(KEY.name)
    try:
        yield bound_port(server)
    finally:
        server.close()


def at(port: int) -> Callable[[], Awaitable[int]]:
    async def start() -> int:
        return port

    return start


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    text: str
    headers: CIMultiDict[str]

    def json(self) -> dict:
        return json.loads(self.text)


async def fetch(client: aiohttp.ClientSession, url: str, **kw) -> Answer:
    """One GET (or `method=`) with the revision's headers unless `headers=` says otherwise."""
    method = kw.pop("method", "GET")
    kw.setdefault("headers", FOR_KEY)
    async with client.request(method, url, **kw) as r:
        return Answer(r.status, await r.text(), CIMultiDict(r.headers))


# -- waking and forwarding ---------------------------------------------------------------


async def test_a_request_for_a_revision_at_zero_wakes_it_and_gets_its_answer(client):
    started: list[asyncio.Server] = []

    async def start_once() -> int:
        if not started:
            started.append(await serve_echo(KEY.name))
        return bound_port(started[0])

    revisions = FakeRevisions(start_once)
    demand: list[ObjectKey] = []
    try:
        async with running(revisions, on_demand=demand.append) as (_, url):
            answers = [await fetch(client, f"{url}/hello?x=1") for _ in range(2)]
    finally:
        for server in started:
            server.close()
    assert [a.status for a in answers] == [200, 200]
    echo = answers[1].json()
    assert (echo["revision"], echo["path"]) == (KEY.name, "/hello?x=1")
    assert echo["headers"]["knative-serving-revision"] == KEY.name
    assert revisions.woken == [KEY, KEY]
    assert demand == [KEY, KEY]
    assert len(started) == 1


async def test_a_request_without_the_revision_header_is_refused_with_the_reason(client, echo_port):
    revisions = FakeRevisions(at(echo_port))
    async with running(revisions) as (_, url):
        answer = await fetch(client, f"{url}/", headers={})
    assert answer.status == 400 and "Knative-Serving-Revision" in answer.text
    assert revisions.woken == []


async def test_a_revision_that_cannot_start_gets_503_naming_it(client):
    async def fail() -> int:
        raise RuntimeError("exited with code 3 before listening")

    async with running(FakeRevisions(fail)) as (_, url):
        answer = await fetch(client, f"{url}/")
    assert answer.status == 503
    assert "exited with code 3" in answer.text and KEY.name in answer.text


async def test_a_revision_that_refuses_connections_gets_502(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        async with running(FakeRevisions(at(s.getsockname()[1]))) as (_, url):
            answer = await fetch(client, f"{url}/")
    assert answer.status == 502 and KEY.name in answer.text


# -- Knative's probe, the queue and the timeout --------------------------------------------


async def test_the_activator_probe_is_answered_by_the_activator_without_waking_anything(
    client, echo_port
):
    revisions = FakeRevisions(at(echo_port))
    async with running(revisions) as (_, url):
        probe = await fetch(client, f"{url}/", headers={**FOR_KEY, "K-Network-Probe": "activator"})
        assert (probe.status, probe.text) == (200, "activator")
        # The next, plain request is the first to wake the revision.
        assert (await fetch(client, f"{url}/")).status == 200
    assert revisions.woken == [KEY]


async def test_a_full_queue_answers_503_and_the_queued_requests_are_served_once_awake(
    client, echo_port
):
    awake = asyncio.Event()

    async def slow_start() -> int:
        await awake.wait()
        return echo_port

    async with running(FakeRevisions(slow_start), queue_depth=2) as (activator, url):
        queued = [asyncio.create_task(fetch(client, f"{url}/")) for _ in range(2)]
        await until(lambda: activator.waiting(KEY) == 2, "two requests queued")
        full = await fetch(client, f"{url}/")
        assert full.status == 503 and "queue is full" in full.text, full
        awake.set()
        assert [a.status for a in await asyncio.gather(*queued)] == [200, 200]
        assert activator.waiting(KEY) == 0


async def test_a_cold_start_past_the_revisions_timeout_answers_504(client):
    never = asyncio.Event()

    async def hang() -> int:
        await never.wait()
        return 1

    async with running(FakeRevisions(hang, timeout=0.3)) as (activator, url):
        began = time.monotonic()
        answer = await fetch(client, f"{url}/")
        took = time.monotonic() - began
        assert activator.waiting(KEY) == 0
    assert answer.status == 504 and "timeoutSeconds (0.3 s)" in answer.text
    assert took >= 0.3


# -- headers ------------------------------------------------------------------------------


def test_hop_by_hop_headers_and_those_connection_names_are_not_passed_on():
    given = CIMultiDict(
        [
            ("Host", "hello.example.com"),
            ("Connection", "keep-alive, X-Private"),
            ("Keep-Alive", "timeout=5"),
            ("X-Private", "secret"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authorization", "Basic x"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    assert list(end_to_end(given).items()) == [
        ("Host", "hello.example.com"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_the_peer_is_appended_to_x_forwarded_for():
    given = CIMultiDict([("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")])
    assert forwarded(given, "127.0.0.1")["X-Forwarded-For"] == "10.0.0.1, 10.0.0.2, 127.0.0.1"
    assert forwarded(CIMultiDict(), "127.0.0.1")["X-Forwarded-For"] == "127.0.0.1"


async def test_the_revision_gets_end_to_end_headers_and_the_forwarded_chain(client, echo_port):
    headers = {
        **FOR_KEY,
        "Host": "hello.default.example.com",
        "Connection": "X-Private",
        "X-Private": "secret",
        "X-Forwarded-For": "10.0.0.1",
        "X-Kept": "yes",
    }
    async with running(FakeRevisions(at(echo_port))) as (_, url):
        seen = (await fetch(client, f"{url}/", headers=headers)).json()["headers"]
    assert seen["host"] == "hello.default.example.com"
    assert seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert "x-private" not in seen
    assert seen.get("connection") != "X-Private"


async def test_the_client_gets_the_revisions_end_to_end_headers_only(client):
    async def answer(request: web.Request) -> web.Response:
        r = web.Response(text="ok", headers={"X-Hop": "1", "Connection": "X-Hop"})
        r.headers.add("Set-Cookie", "a=1")
        r.headers.add("Set-Cookie", "b=2")
        return r

    app = web.Application()
    app.router.add_get("/", answer)
    async with app_on_loopback(app) as port, running(FakeRevisions(at(port))) as (_, url):
        got = await fetch(client, f"{url}/")
    assert (got.status, got.text) == (200, "ok")
    assert "X-Hop" not in got.headers
    assert got.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_a_request_head_over_the_limit_is_refused_before_anything_wakes(client, echo_port):
    revisions = FakeRevisions(at(echo_port))
    async with running(revisions) as (_, url):
        big = await fetch(client, f"{url}/", headers={**FOR_KEY, "X-Big": "x" * 100_000})
        assert big.status == 400
        assert (await fetch(client, f"{url}/")).status == 200
    assert revisions.woken == [KEY]


# -- keep-alive and streaming -------------------------------------------------------------


async def test_one_client_connection_and_one_pooled_revision_connection_carry_many_requests():
    peers: list[object] = []

    async def answer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    opened: list[object] = []

    async def on_open(*args: object) -> None:
        opened.append(args)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_open)
    one = aiohttp.TCPConnector(limit=1)
    async with (
        app_on_loopback(app) as port,
        running(FakeRevisions(at(port))) as (_, url),
        aiohttp.ClientSession(connector=one, trace_configs=[trace]) as client,
    ):
        answers = [await fetch(client, f"{url}/") for _ in range(5)]
    assert [a.text for a in answers] == ["ok"] * 5
    assert len(opened) == 1, "the activator closed the client's connection"
    assert len(peers) == 5 and len(set(peers)) == 1, "the revision's connection was not reused"


async def test_the_response_streams_before_the_revision_has_finished_it(client):
    go_on = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        r = web.StreamResponse()
        await r.prepare(request)
        await r.write(b"first")
        await go_on.wait()  # set only once the client has read "first" through the activator
        await r.write(b"second")
        return r

    app = web.Application()
    app.router.add_get("/", answer)
    async with (
        app_on_loopback(app) as port,
        running(FakeRevisions(at(port))) as (_, url),
        client.get(f"{url}/", headers=FOR_KEY) as r,
    ):
        async with asyncio.timeout(5):
            assert await r.content.readexactly(5) == b"first"
        go_on.set()
        assert await r.content.read() == b"second"


async def test_the_request_body_streams_before_the_client_has_finished_it(client):
    got_first = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        assert await request.content.readexactly(5) == b"first"
        got_first.set()
        return web.Response(text=(await request.content.read()).decode())

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        # Sent on only once the revision has read the first part through the activator.
        async with asyncio.timeout(5):
            await got_first.wait()
        yield b"second"

    app = web.Application()
    app.router.add_post("/", answer)
    async with app_on_loopback(app) as port, running(FakeRevisions(at(port))) as (_, url):
        got = await fetch(client, f"{url}/", method="POST", data=body())
    assert (got.status, got.text) == (200, "second")


async def test_a_client_expecting_100_continue_gets_it_and_its_body_goes_through(client, echo_port):
    async with running(FakeRevisions(at(echo_port))) as (_, url):
        got = await fetch(client, f"{url}/", method="POST", data=b"x" * 1000, expect100=True)
    assert got.status == 200 and got.json()["body_bytes"] == 1000
    assert "expect" not in got.json()["headers"]


CHUNK = b"\x5a" * (64 * 1024)
UPLOAD = 50 * MB


async def _generated(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(CHUNK)):
        yield CHUNK


@contextlib.contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The peak of Python allocations while the block runs, in bytes (tracemalloc's)."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
        result.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


async def test_a_50_mb_upload_streams_through_without_being_held(client, echo_port):
    async with running(FakeRevisions(at(echo_port))) as (_, url):
        with peak_allocated() as peak:
            got = await fetch(client, f"{url}/up", method="POST", data=_generated(UPLOAD))
    assert got.status == 200 and got.json()["body_bytes"] == UPLOAD
    # The client, the activator and the echo app all run here: held whole, 50 MB would show.
    assert peak[0] < 8 * MB, f"peak {peak[0] / MB:.1f} MB"


async def test_a_50_mb_download_streams_through_without_being_held(client):
    async def answer(request: web.Request) -> web.StreamResponse:
        r = web.StreamResponse(headers={"Content-Length": str(UPLOAD)})
        await r.prepare(request)
        async for chunk in _generated(UPLOAD):
            await r.write(chunk)
        return r

    app = web.Application()
    app.router.add_get("/", answer)
    received = 0
    async with app_on_loopback(app) as port, running(FakeRevisions(at(port))) as (_, url):
        with peak_allocated() as peak:
            async with client.get(f"{url}/", headers=FOR_KEY) as r:
                assert r.headers["Content-Length"] == str(UPLOAD)
                async for chunk in r.content.iter_any():
                    received += len(chunk)
    assert received == UPLOAD
    assert peak[0] < 8 * MB, f"peak {peak[0] / MB:.1f} MB"


# -- websockets ---------------------------------------------------------------------------


async def test_a_websocket_passes_through_both_ways(client, echo_port):
    async with (
        running(FakeRevisions(at(echo_port))) as (_, url),
        client.ws_connect(f"{url}/ws", headers=FOR_KEY) as ws,
    ):
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        await ws.send_bytes(b"\x00\x01" * 1000)
        assert (await ws.receive(timeout=5)).data == b"\x00\x01" * 1000


async def test_a_websocket_keeps_its_subprotocol_and_the_revisions_close_code(client):
    async def answer(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.data == "bye":
                await ws.close(code=4000, message=b"done")
            else:
                await ws.send_str(f"{msg.data} from {request.headers['Knative-Serving-Revision']}")
        return ws

    app = web.Application()
    app.router.add_get("/", answer)
    async with (
        app_on_loopback(app) as port,
        running(FakeRevisions(at(port))) as (_, url),
        client.ws_connect(f"{url}/", headers=FOR_KEY, protocols=("chat",)) as ws,
    ):
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == f"hi from {KEY.name}"
        await ws.send_str("bye")
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == 4000
