"""The admin HTTP server: probes, metrics and debug views, on aiohttp.

    /healthz                  200 while the process runs (liveness)
    /readyz, /ready           200 once the first complete state is loaded and served
                              and every source reads well; else 503 with the reason
    /metrics                  Prometheus text format (admin/metrics.py)
    /debug/status[?node=ID]   JSON (shape in admin/status_view.py)
    /debug/config_dump?node=ID  what that gateway was last sent, decoded, keys redacted

It binds 127.0.0.1 unless told otherwise: /debug shows every route of every
tenant. It is small on purpose: GET and HEAD only, request heads of at most
8 KiB per line, at most `MAX_CONNECTIONS` open at once (more are closed at
once), and a connection that does not finish a request head within
`HEAD_TIMEOUT` seconds of opening (or of its last answer) is closed, so
slow or stuck clients cannot pile up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .metrics import CONTENT_TYPE
from .status_view import config_dump, status

if TYPE_CHECKING:
    from ..app import ControlPlane

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024
MAX_HEADERS = 64
MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 5.0

ENDPOINTS = ("/healthz", "/readyz", "/ready", "/metrics", "/debug/status", "/debug/config_dump")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ready_reason(plane: ControlPlane) -> str | None:
    """Why the plane is not ready, or None when it is."""
    if not plane.loaded.is_set() or plane.cache.current() is None:
        return "the first complete state is not loaded yet"
    if not plane.pipeline.sources_healthy():
        failing = [f"{s}: {h.detail}" for s, h in plane.pipeline.health.items() if not h.healthy]
        return "a source cannot be read (the last good state keeps serving): " + "; ".join(failing)
    return None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, indent=2) + "\n", content_type="application/json"
    )


def build_app(plane: ControlPlane, guards: dict[object, _Guard] | None = None) -> web.Application:
    """The app; `guards` maps a connection's transport to its `_Guard` (AdminServer's)."""
    guards = {} if guards is None else guards

    @web.middleware
    async def only_get(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        guard = guards.get(request.transport)
        if guard is not None:
            guard.busy()
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.idle()

    async def healthz(request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        reason = ready_reason(plane)
        if reason is None:
            return _json({"ready": True})
        return _json({"ready": False, "reason": reason}, 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=plane.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def debug_status(request: web.Request) -> web.Response:
        return _json(status(plane, request.query.get("node")))

    async def debug_config_dump(request: web.Request) -> web.Response:
        node = request.query.get("node")
        if not node:
            return _json({"error": "name a gateway: /debug/config_dump?node=ID"}, 400)
        dump = config_dump(plane, node)
        if dump is None:
            return _json({"error": f"no gateway with node id {node!r} is connected"}, 404)
        return _json(dump)

    async def not_found(request: web.Request) -> web.Response:
        return _json({"error": "not found; try " + ", ".join(ENDPOINTS)}, 404)

    app = web.Application(middlewares=[only_get], client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/ready", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/status", debug_status)
    app.router.add_get("/debug/config_dump", debug_config_dump)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server log, with a malformed request (too long, not HTTP) as one line:
    whoever can reach the port chooses those, so they must not fill the log with
    tracebacks. An error of our own handlers keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            text = " ".join(str(exc_info.message).split())[:200]
            self.warning("admin HTTP: bad request (%s %s)", exc_info.code, text)
            return
        self.error(msg, *args, exc_info=exc_info, **kw)


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it, and cuts it when over
    the limit or when it sits `HEAD_TIMEOUT` without a request being answered.

    aiohttp's keep-alive timeout only runs between requests, not while a head is
    read byte by byte, so the deadline is kept here.
    """

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._server.connections) >= self._server.max_connections:
            self._server.refused += 1
            transport.abort()
            return
        self._server.connections.add(self)
        self._server.guards[transport] = self
        self._arm()
        self._inner = self._server.protocol()
        self._inner.connection_made(transport)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.head_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._busy == 0 and self._transport is not None:
            self._transport.abort()

    def busy(self) -> None:
        self._busy += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._transport is not None and not self._transport.is_closing():
            self._arm()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._inner is None:
            return
        self._server.connections.discard(self)
        self._server.guards.pop(self._transport, None)
        self._inner.connection_lost(exc)


class AdminServer:
    """The admin server of one plane: `await start(...)`, `await close()`."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.connections: set[_Guard] = set()
        self.refused = 0
        self.guards: dict[object, _Guard] = {}
        self._app = build_app(plane, self.guards)
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
            handle_signals=False,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            keepalive_timeout=head_timeout,
        )
        self._server: asyncio.Server | None = None
        self.port = 0

    def protocol(self) -> asyncio.Protocol:
        handler = self._runner.server
        assert handler is not None
        return handler()

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Guard(self), host, port)
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(
                f"could not listen on {host}:{port} for the admin server (--health-address, "
                f"--health-port): {e.strerror or e}"
            ) from e
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("admin HTTP (%s) listening on %s:%d", ", ".join(ENDPOINTS), host, self.port)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        for guard in list(self.connections):
            if guard._transport is not None:
                guard._transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


async def serve_admin(plane: ControlPlane, host: str, port: int) -> AdminServer:
    server = AdminServer(plane)
    await server.start(host, port)
    return server
