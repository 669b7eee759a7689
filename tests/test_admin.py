"""The admin HTTP server, running on loopback, asked the way probes, operators and
scanners ask it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from knative_xds import synth
from knative_xds.admin.http import AdminServer
from knative_xds.admin.status_view import REDACTED
from knative_xds.resources import SECRET

from .kingress_fixtures import KEY_PEM, a_kingress, a_rule, a_secret, a_service, a_tls
from .protocol.conftest import Harness, World, base_objects, eventually, start_harness

HOST = "hello.default.example.com"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness(load=False)
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
async def admin(harness: Harness) -> AsyncIterator[AdminServer]:
    server = AdminServer(harness.plane, max_connections=4, head_timeout=2.0)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http(admin: AdminServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{admin.port}") as session:
        yield session


async def _load(harness: Harness) -> None:
    harness.world.apply(*base_objects())
    harness.plane.loaded.set()


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_only_get_and_head_are_answered(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as r:
        assert r.status == 200 and (await r.json()) == {"ok": True}
    async with http.head("/healthz") as r:
        assert r.status == 200
    for method in ("POST", "PUT", "DELETE"):
        async with http.request(method, "/healthz") as r:
            assert r.status == 405, method
            assert r.headers["Allow"] == "GET,HEAD"
        async with http.request(method, "/no-such-page") as r:
            assert r.status == 405, method


async def test_a_100_kb_request_line_gets_a_4xx_and_no_traceback(
    admin: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await _raw(admin.port, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.split(b" ", 2)[1].startswith(b"4"), answer[:80]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_connections_beyond_the_limit_are_closed_and_slow_heads_are_cut(
    admin: AdminServer, http: aiohttp.ClientSession
) -> None:
    # Four clients that open a connection and send half a request head, like slowloris.
    held = [await asyncio.open_connection("127.0.0.1", admin.port) for _ in range(4)]
    for _, writer in held:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
    await eventually(lambda: len(admin.connections) == 4)
    # A fifth is closed at once, without an answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert admin.refused >= 1
    # The slow heads are cut at the deadline, which frees the slots for real requests.
    for reader, writer in held:
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    async with http.get("/healthz") as r:
        assert r.status == 200


async def test_readyz_says_503_with_a_reason_until_loaded_and_while_a_source_fails(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    for path in ("/readyz", "/ready"):
        async with http.get(path) as r:
            assert r.status == 503
            assert "first complete state" in (await r.json())["reason"]
    await _load(harness)
    for path in ("/readyz", "/ready"):
        async with http.get(path) as r:
            assert r.status == 200 and (await r.json()) == {"ready": True}
    harness.plane.source_health("kubernetes: routes.serving.knative.dev", False, "HTTP 500")
    async with http.get("/readyz") as r:
        assert r.status == 503
        assert "routes.serving.knative.dev: HTTP 500" in (await r.json())["reason"]
    harness.plane.source_health("kubernetes: routes.serving.knative.dev", True)
    async with http.get("/readyz") as r:
        assert r.status == 200


async def test_metrics_are_prometheus_text(harness: Harness, http: aiohttp.ClientSession) -> None:
    await _load(harness)
    async with http.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    serial = harness.plane.cache.current().serial
    assert f"knative_xds_snapshot_version {float(serial)}" in text
    assert 'knative_xds_xds_connected{protocol="sotw"} 0.0' in text


async def test_status_lists_each_gateway_and_config_dump_redacts_private_keys(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    plane = harness.plane
    kingress = a_kingress("hello", a_rule(HOST), tls=[a_tls(HOST)])
    World(plane).apply(
        synth.activator_slice("10.0.0.1", 8012, 8012), a_service(), a_secret(), kingress
    )
    plane.loaded.set()
    secrets = sorted(World(plane).names(SECRET))
    assert secrets, "the KIngress's Secret is not served"
    client = harness.delta("gw-a")  # the test's SotW client does not decode Secrets
    await client.request(SECRET, secrets)
    response = await client.recv(SECRET)
    await client.ack(response)
    await harness.caught_up(client)

    async with http.get("/debug/status", params={"node": "gw-a"}) as r:
        gateways = (await r.json())["gateways"]
    assert [(g["node"], g["protocol"]) for g in gateways] == [("gw-a", "delta")]
    sds = gateways[0]["types"]["SDS"]
    assert sds["version_sent"] == sds["version_acked"] == response.system_version_info
    assert sds["last_nack"] is None

    async with http.get("/debug/config_dump", params={"node": "gw-a"}) as r:
        assert r.status == 200
        text = await r.text()
        dump = await r.json()
    assert set(dump["types"]["SDS"]) == set(secrets)
    for name in secrets:
        certificate = dump["types"]["SDS"][name]["tls_certificate"]
        assert certificate["private_key"] == REDACTED
        assert "certificate_chain" in certificate
    assert base64.b64encode(KEY_PEM).decode() not in text and "MIIEfake" not in text

    async with http.get("/debug/config_dump", params={"node": "nobody"}) as r:
        assert r.status == 404


def test_serve_binds_the_admin_port_to_loopback_unless_told() -> None:
    from knative_xds.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["serve", "--config", "k", "--health-port", "9"]).health_address == "127.0.0.1"
    wide = parse(["serve", "--config", "k", "--health-port", "9", "--health-address", "0.0.0.0"])
    assert wide.health_address == "0.0.0.0"
