"""Local stand-ins for the images Knative's ingress conformance suite deploys.

Each serves on 127.0.0.1 at a port chosen at run time and behaves as the image
does (knative/networking `test/test_images/`):

- `runtime`: answers JSON describing the request (`request.uri`, `host`,
  `method`, `headers` as Go's canonical keys → values, `protoMajor`/`protoMinor`).
- `timeout`: sleeps `?initialTimeout=` ms before the headers and `?timeout=` ms
  after them, then says how long it slept.
- `retry`: 503 on its first request, 200 on every later one.
- `wsserver`: a websocket echo that appends " <suffix>" to every message.
- `grpc-ping` (ping.py): `ping.PingService` over h2c; each reply is the request's
  `msg` + suffix.
- `httpproxy`: forwards every request to a gateway address with the Host set to
  a target host (the visibility cases reach a cluster-local host through it).

Every HTTP image is wrapped, as in Go, in Knative's probe handler: a request with
`K-Network-Probe: probe` is answered at once with its `K-Network-Hash` echoed in
the response headers; any other request loses its `K-Network-Hash` header first.

The Go images serve HTTP/1.1 and h2c on one port (`knative.dev/pkg/network.NewServer`),
so `runtime`, `timeout` and `retry` run on hypercorn, which does too, and report the
protocol the gateway actually used; aiohttp speaks HTTP/1.1 only and serves the
websocket echo and the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

PROBE_KEY = "K-Network-Probe"
PROBE_VALUE = "probe"
HASH_KEY = "K-Network-Hash"
KUBELET_PROBE_KEY = "K-Kubelet-Probe"
# Long enough that a backend never closes a connection Envoy is about to reuse
# (a close racing a request would be a 503 the gateway is not to blame for).
KEEPALIVE_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Served:
    """A running backend: where it listens and how to stop it."""

    port: int
    stop: Callable[[], Awaitable[None]]


# -- what every HTTP image shares -------------------------------------------------------


def canonical_key(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: `foo-bar` → `Foo-Bar`."""
    if any(not (c.isalnum() or c == "-") for c in name):
        return name  # Go leaves keys with other characters as they are
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def probe_reply(headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes] | None:
    """Knative's probe handler: the reply to a probe request, or None to pass it on."""
    if headers.get(PROBE_KEY) != PROBE_VALUE:
        return None
    value = headers.get(HASH_KEY, "")
    if not value:
        message = f'a probe request must contain a non-empty "{HASH_KEY}" header\n'
        return 400, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()
    return 200, {HASH_KEY: value}, b""


def runtime_info(
    *,
    method: str,
    uri: str,
    host: str,
    headers: Iterable[tuple[str, str]],
    proto: tuple[int, int],
) -> dict[str, Any]:
    """The runtime image's JSON (`types.RuntimeInfo`), request part; Host is not a header."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() != "host":
            grouped.setdefault(canonical_key(name), []).append(value)
    return {
        "request": {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uri": uri,
            "host": host,
            "method": method,
            "headers": grouped,
            "protoMajor": proto[0],
            "protoMinor": proto[1],
        },
        "host": {"envs": {}},
    }


# -- runtime, timeout and retry: ASGI on hypercorn (HTTP/1.1 and h2c) ----------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class AsgiRequest:
    method: str
    uri: str
    host: str
    headers: tuple[tuple[str, str], ...]
    proto: tuple[int, int]
    query: Mapping[str, list[str]]

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> AsgiRequest:
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        host = next((v for k, v in headers if k.lower() == "host"), "")
        major, _, minor = scope["http_version"].partition(".")
        return cls(
            method=scope["method"],
            uri=path + (f"?{query}" if query else ""),
            host=host,
            headers=headers,
            proto=(int(major), int(minor or 0)),
            query=parse_qs(query),
        )

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def first(self, key: str) -> str:
        return (self.query.get(key) or [""])[0]


Handler = Callable[[AsgiRequest, Send], Awaitable[None]]


async def _start(send: Send, status: int, headers: Mapping[str, str]) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def _body(send: Send, data: bytes, *, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _reply(send: Send, status: int, headers: Mapping[str, str], data: bytes) -> None:
    await _start(send, status, headers)
    await _body(send, data)


def _asgi(handler: Handler) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """An ASGI app: lifespan acknowledged, every request through the probe handler first."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        request = AsgiRequest.from_scope(scope)
        probe = probe_reply({canonical_key(k): v for k, v in request.headers})
        if probe is not None:
            await _reply(send, *probe)
            return
        stripped = tuple((k, v) for k, v in request.headers if k.lower() != HASH_KEY.lower())
        await handler(
            AsgiRequest(
                request.method, request.uri, request.host, stripped, request.proto, request.query
            ),
            send,
        )

    return app


async def _runtime(request: AsgiRequest, send: Send) -> None:
    info = runtime_info(
        method=request.method,
        uri=request.uri,
        host=request.host,
        headers=request.headers,
        proto=request.proto,
    )
    headers = {
        "Content-Type": "application/json",
        "Cache-Control": "no-cache, no-store, must-revalidate",
    }
    await _reply(send, 200, headers, json.dumps(info, indent="\t").encode() + b"\n")


async def _timeout(request: AsgiRequest, send: Send) -> None:
    initial = int(request.first("initialTimeout") or 0)
    await asyncio.sleep(initial / 1000)
    await _start(send, 200, {"Content-Type": "text/plain"})
    await _body(send, b"", more=True)  # the headers go out now (Go's Flush)
    delay = int(request.first("timeout") or 0)
    await asyncio.sleep(delay / 1000)
    await _body(send, f"Slept for {delay} milliseconds".encode())


def _retry() -> Handler:
    served = 0

    async def handler(request: AsgiRequest, send: Send) -> None:
        nonlocal served
        status = 503 if served == 0 else 200
        body = f"Retry {served}".encode()
        served += 1
        await _reply(send, status, {"Content-Type": "text/plain"}, body)

    return handler


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


async def _serve_asgi(handler: Handler) -> Served:
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.keep_alive_timeout = KEEPALIVE_SECONDS
    config.graceful_timeout = 0.2
    config.accesslog = None
    config.loglevel = "WARNING"
    stopping = asyncio.Event()
    task = asyncio.create_task(
        hypercorn_serve(_asgi(handler), config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
    )

    async def stop() -> None:
        stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return Served(port, stop)


async def serve_runtime() -> Served:
    return await _serve_asgi(_runtime)


async def serve_timeout() -> Served:
    return await _serve_asgi(_timeout)


async def serve_retry() -> Served:
    return await _serve_asgi(_retry())


# -- websocket echo and proxy: aiohttp ------------------------------------------------------


@web.middleware
async def _probe_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    probe = probe_reply(request.headers)  # type: ignore[arg-type]
    if probe is not None:
        status, headers, body = probe
        return web.Response(status=status, headers=headers, body=body)
    if HASH_KEY in request.headers:
        headers = request.headers.copy()
        del headers[HASH_KEY]
        request = request.clone(headers=headers)
    return await handler(request)


async def _serve_aiohttp(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Served:
    app = web.Application(middlewares=[_probe_middleware])
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        shutdown_timeout=0.2,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return Served(runner.addresses[0][1], runner.cleanup)


async def serve_websocket(suffix: str) -> Served:
    async def echo(request: web.Request) -> web.StreamResponse:
        ua = request.headers.get("User-Agent", "")
        if ua.startswith("kube-probe/") or KUBELET_PROBE_KEY in request.headers:
            return web.Response(status=200)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(f"{message.data} {suffix}" if suffix else message.data)
            elif message.type is WSMsgType.BINARY:
                tail = f" {suffix}".encode() if suffix else b""
                await ws.send_bytes(message.data + tail)
        return ws

    return await _serve_aiohttp(echo)


# Hop-by-hop headers a proxy must not pass on (RFC 9110 §7.6.1), as Go's ReverseProxy drops.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Te",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


async def serve_proxy(target_host: str, gateway: tuple[str, int]) -> Served:
    """The httpproxy image: every request goes to `gateway` with `Host: target_host`."""
    session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=60))
    base = f"http://{gateway[0]}:{gateway[1]}"

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = target_host
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        body = await request.read()
        try:
            async with session.request(
                request.method,
                base + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            ) as upstream:
                data = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, headers=out, body=data)
        except OSError as e:  # Go's ErrorHandler: 502 with the error
            return web.Response(status=502, text=str(e))

    served = await _serve_aiohttp(forward)

    async def stop() -> None:
        await served.stop()
        await session.close()

    return Served(served.port, stop)


# hypercorn logs every connection Envoy drops at shutdown; only real errors matter here.
logging.getLogger("hypercorn.error").setLevel(logging.ERROR)
