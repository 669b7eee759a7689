"""The gateway as an internet-facing edge: each limit shown through the real Envoy, with
the attack it stops beside a normal request that still gets through."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
from dataclasses import dataclass

import pytest

from knative_xds import synth as s
from knative_xds.envoy import admin_get
from knative_xds.local.echo import bound_port
from knative_xds.translate import GatewayConfig
from knative_xds.translate.edge import Edge
from tests.kingress_fixtures import a_kingress, a_path, a_rule, a_service, a_split

from . import gateway as gateway_module

HOST = "edge.example.com"
HELLO = "hello.default.example.com"


@pytest.fixture
def edge_config(monkeypatch):
    """Start the next gateway with these edge settings (the fixture builds GatewayConfig)."""

    def configure(edge: Edge | None = None, trusted_hops: int = 0) -> None:
        config = functools.partial(GatewayConfig, edge=edge or Edge(), trusted_hops=trusted_hops)
        monkeypatch.setattr(gateway_module, "GatewayConfig", config)

    return configure


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def echo(self) -> dict:
        return json.loads(self.body)


def fetch(port: int, path: str, *, host: str = HOST, headers: dict | None = None) -> Answer:
    """One GET, the path sent exactly as given (blocking: run it in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


async def get(gateway, path: str, **kw) -> Answer:
    return await asyncio.to_thread(fetch, gateway.external, path, **kw)


async def two_prefixes(gateway) -> None:
    """KIngress `edge`: /a → revision a-00001, /b → revision b-00001."""
    revisions = await gateway.ready_revisions("a-00001", "b-00001")
    paths = [a_path(a_split(r), path=f"/{r[0]}") for r in ("a-00001", "b-00001")]
    await gateway.start(
        [
            a_kingress("edge", a_rule(HOST, paths=paths)),
            a_service("a-00001", revision="a-00001"),
            a_service("b-00001", revision="b-00001"),
            *revisions,
        ]
    )
    await gateway.wait_until(lambda: _served_b(gateway), what="/b to be served")


async def _served_b(gateway) -> bool:
    answer = await get(gateway, "/b")
    return answer.status == 200 and answer.echo()["revision"] == "b-00001"


async def test_dot_segments_and_escaped_slashes_cannot_step_into_another_prefix(
    sotw_gateway, edge_config
):
    edge_config()
    await two_prefixes(sotw_gateway)

    normal = await get(sotw_gateway, "/a/x")
    assert (normal.status, normal.echo()["revision"]) == (200, "a-00001")
    # `..%2F`: matched by prefix /a, read as /b by a backend that decodes it. Envoy
    # sends the client to the one path every hop agrees on instead.
    escaped = await get(sotw_gateway, "/a/..%2Fb")
    assert 300 <= escaped.status < 400, escaped
    assert escaped.headers["location"].endswith("/b"), escaped.headers
    # Encoded and plain dot segments are resolved before the route is chosen: the
    # request reaches the backend of the path it names, with that path.
    for path in ("/a/%2e%2e/b", "/a/../b", "/a/./..//b"):
        answer = await get(sotw_gateway, path)
        assert answer.status == 200, (path, answer)
        assert (answer.echo()["revision"], answer.echo()["path"]) == ("b-00001", "/b"), path
    # Doubled slashes are merged: still prefix /a.
    merged = await get(sotw_gateway, "//a//x")
    assert (merged.echo()["revision"], merged.echo()["path"]) == ("a-00001", "/a/x")


async def test_slow_request_headers_are_cut_after_the_request_headers_timeout(
    sotw_gateway, edge_config
):
    edge_config(Edge(request_headers_timeout=1.0))
    await two_prefixes(sotw_gateway)

    # A client that sends its headers at once is answered.
    reader, writer = await asyncio.open_connection("127.0.0.1", sotw_gateway.external)
    writer.write(f"GET /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    whole = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert whole.startswith(b"HTTP/1.1 200"), whole[:100]

    # Slowloris: one header line every 0.2 s, never the blank line that ends them.
    reader, writer = await asyncio.open_connection("127.0.0.1", sotw_gateway.external)
    writer.write(f"GET /a HTTP/1.1\r\nHost: {HOST}\r\n".encode())

    async def dribble() -> None:
        for i in range(50):  # 10 s at most: bounded even if the timeout never fires
            with contextlib.suppress(ConnectionError):
                writer.write(f"x-slow-{i}: 1\r\n".encode())
                await writer.drain()
            await asyncio.sleep(0.2)

    slow = asyncio.create_task(dribble())
    try:
        received = await asyncio.wait_for(_until_closed(reader), 15)
    finally:
        slow.cancel()
        writer.close()
    # Envoy answers 408 and closes; the reset for the lines still arriving may beat
    # the answer to the client, so the counter says why the connection went.
    assert not slow.done(), "the connection outlived every header line sent"
    assert received in (b"",) or received.startswith(b"HTTP/1.1 408"), received[:100]
    assert sotw_gateway.envoy_stat("http.external.downstream_rq_header_timeout") == 1


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the peer closes or resets the connection."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(4096):
            received += chunk
    return received


async def test_too_many_or_too_large_headers_get_431_and_underscores_400(sotw_gateway, edge_config):
    edge_config()
    await two_prefixes(sotw_gateway)

    assert (await get(sotw_gateway, "/a", headers={"x-fine": "1"})).status == 200
    many = {f"x-flood-{i}": "1" for i in range(150)}
    assert (await get(sotw_gateway, "/a", headers=many)).status == 431
    assert (await get(sotw_gateway, "/a", headers={"x-big": "v" * 70_000})).status == 431
    # `x_user` and `x-user` are the same header to CGI-style backends: refused.
    assert (await get(sotw_gateway, "/a", headers={"x_user": "admin"})).status == 400


@pytest.mark.parametrize("hops", [0, 1])
async def test_x_forwarded_for_from_the_client_is_trusted_only_as_far_as_the_hops_say(
    sotw_gateway, edge_config, hops
):
    edge_config(trusted_hops=hops)
    await two_prefixes(sotw_gateway)

    seen = (await get(sotw_gateway, "/a", headers={"X-Forwarded-For": "203.0.113.7"})).echo()
    headers = seen["headers"]
    # A hop is appended whatever the client claimed (for a loopback peer Envoy appends
    # its own address), so the claim is never the last, trusted, entry.
    claimed, appended = headers["x-forwarded-for"].replace(" ", "").split(",")
    assert claimed == "203.0.113.7" and appended != claimed
    # Who Envoy takes the client to be: with no trusted load balancer the peer that
    # connected (this test, on loopback), with one the address that balancer appended.
    client = headers.get("x-envoy-external-address")
    assert client == ("127.0.0.1" if hops == 0 else "203.0.113.7"), headers


async def serve_slow() -> asyncio.Server:
    """A backend that answers /silent after 2 s of silence and /stream over ~2 s in chunks."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/silent"):
                await asyncio.sleep(2)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(7):
                    writer.write(b"5\r\ntick\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.3)
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_idle_limits_never_cut_what_the_revision_timeout_allows(sotw_gateway, edge_config):
    # A 1 s stream idle timeout on the listener, far below the revisions' own.
    edge_config(Edge(stream_idle_timeout=1.0))
    slow = await serve_slow()
    sotw_gateway.apps["slow"] = slow
    port = bound_port(slow)
    names = {"patient-00001": 5, "strict-00001": 1}
    await sotw_gateway.start(
        [
            *(s.route(n[:-6], [s.target(n, 100)]) for n in names),
            *(s.revision(n, timeout=t) for n, t in names.items()),
            *(s.endpoint_slice(n, ["127.0.0.1"], port, suffix=n[0]) for n in names),
        ]
    )
    patient = "patient.default.example.com"

    async def routed() -> bool:
        return (await get(sotw_gateway, "/stream", host=patient)).status == 200

    await sotw_gateway.wait_until(routed, what="the patient route")

    # Silent for 2 s: longer than the listener's idle timeout, within the revision's 5 s.
    silent = await get(sotw_gateway, "/silent", host=patient)
    assert (silent.status, silent.body) == (200, b"done")
    # Streaming for ~2 s: a long request is not cut while bytes flow (route timeout 0).
    streamed = await get(sotw_gateway, "/stream", host="strict.default.example.com")
    assert (streamed.status, streamed.body) == (200, b"tick\n" * 7)
    # The same silence on a revision whose timeout is 1 s is cut: the limit is the revision's.
    cut = await get(sotw_gateway, "/silent", host="strict.default.example.com")
    assert cut.status >= 400, cut


def _walk(node, key: str):
    """Every value under `key`, anywhere in a config dump."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


async def test_http2_buffer_connection_and_overload_limits_are_in_envoys_config(
    sotw_gateway, edge_config
):
    edge_config()
    await two_prefixes(sotw_gateway)
    dump = json.loads(await asyncio.to_thread(admin_get, sotw_gateway.admin, "/config_dump"))
    listeners = [
        entry["active_state"]["listener"]
        for section in _walk(dump, "dynamic_listeners")
        for entry in section
    ]
    assert {listener["name"] for listener in listeners} == {"external", "internal"}
    for listener in listeners:
        assert listener["per_connection_buffer_limit_bytes"] == 32768
        filters = listener["filter_chains"][0]["filters"]
        assert filters[0]["name"] == "envoy.filters.network.connection_limit"
        manager = filters[1]["typed_config"]
        assert manager["http2_protocol_options"] == {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        }
        assert manager["use_remote_address"] is True
        assert manager["request_headers_timeout"] == "10s"
        # Off: a route with timeout 0 has no limit; one with a revision timeout sets its own.
        assert manager["stream_idle_timeout"] == "0s"
    clusters = [
        entry["cluster"] for section in _walk(dump, "dynamic_active_clusters") for entry in section
    ]
    assert clusters and all(c["per_connection_buffer_limit_bytes"] == 32768 for c in clusters)
    [overload] = list(_walk(dump, "overload_manager"))
    monitors = {m["name"] for m in overload["resource_monitors"]}
    assert monitors == {
        "envoy.resource_monitors.fixed_heap",
        "envoy.resource_monitors.global_downstream_max_connections",
    }


async def test_a_connection_over_the_listener_limit_is_closed_while_the_others_are_served(
    sotw_gateway, edge_config
):
    edge_config(Edge(max_connections_per_listener=2))
    await two_prefixes(sotw_gateway)
    # The readiness polls above have closed their connections; wait until Envoy agrees.
    gauge = "connection_limit.external.active_connections"
    await sotw_gateway.wait_until(lambda: sotw_gateway.envoy_stat(gauge) == 0, what=gauge)

    held = [await asyncio.open_connection("127.0.0.1", sotw_gateway.external) for _ in range(2)]
    await sotw_gateway.wait_until(lambda: sotw_gateway.envoy_stat(gauge) == 2, what=f"{gauge} 2")
    reader, writer = await asyncio.open_connection("127.0.0.1", sotw_gateway.external)
    try:
        writer.write(f"GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        refused = await asyncio.wait_for(_until_closed(reader), 10)
        # One of the connections within the limit is still served.
        first_reader, first_writer = held[0]
        first_writer.write(f"GET /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        served = await asyncio.wait_for(_until_closed(first_reader), 10)
    finally:
        writer.close()
        for _, w in held:
            w.close()
    assert refused == b""
    assert served.startswith(b"HTTP/1.1 200"), served[:100]
    assert sotw_gateway.envoy_stat("connection_limit.external.limited_connections") == 1


class _H2Client:
    """One h2c connection with prior knowledge, driven by hand (python-hyper's h2)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.events: list = []
        self.closed = False

    async def until(self, predicate) -> None:
        while not predicate() and not self.closed:
            self.writer.write(self.conn.data_to_send())
            await self.writer.drain()
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            self.closed = not data
            self.events.extend(self.conn.receive_data(data) if data else ())

    def has(self, kind, stream_id: int | None = None) -> bool:
        return any(
            isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)
            for e in self.events
        )


async def test_an_http2_stream_flood_is_cut_and_a_client_within_the_limits_is_served(
    sotw_gateway, edge_config
):
    """The limits are announced in SETTINGS; a client that opens more streams than
    announced loses its connection, and a request on another connection gets its 200."""
    import h2.events
    import h2.settings

    edge_config()
    await two_prefixes(sotw_gateway)
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", HOST), (":path", "/a")]
    flood = _H2Client(*await asyncio.open_connection("127.0.0.1", sotw_gateway.external))
    polite = _H2Client(*await asyncio.open_connection("127.0.0.1", sotw_gateway.external))
    try:
        await flood.until(lambda: flood.has(h2.events.RemoteSettingsChanged))
        limits = flood.conn.remote_settings
        assert limits[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
        assert limits[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 65536
        # h2 honours the announced limit itself: lift it on our side to play the attacker.
        flood.conn.remote_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
        )
        for _ in range(101):  # every stream held open: no END_STREAM
            flood.conn.send_headers(flood.conn.get_next_available_stream_id(), headers)
        await flood.until(lambda: flood.has(h2.events.ConnectionTerminated))

        polite.conn.send_headers(1, headers, end_stream=True)
        await polite.until(lambda: polite.has(h2.events.ResponseReceived, 1))
    finally:
        flood.writer.close()
        polite.writer.close()
    assert flood.closed or flood.has(h2.events.ConnectionTerminated)
    assert not flood.has(h2.events.ResponseReceived), "no stream of the flood was answered"
    [response] = [e for e in polite.events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[b":status"] == b"200"
