"""A local activator: holds a request for a revision at zero, wakes it, then forwards.

Knative's activator does this in a cluster. Here it reads the revision from the
`Knative-Serving-Revision`/`Knative-Serving-Namespace` headers the gateway sets
on every split, starts the revision's process, and proxies the request once the
process listens. The control plane meanwhile sees the new endpoints and moves
the next requests straight to the process.

It is an HTTP/1.1 proxy on aiohttp: bodies stream both ways in chunks (never
held whole), client connections are kept alive and connections to revisions are
pooled, and websockets pass through frame by frame. While a revision wakes, its
requests wait in a bounded queue (full: 503), and a request whose revision does
not start answering within the revision's `timeoutSeconds` gets a 504. Revisions
that speak h2c (gRPC) are served on a second port, by `h2c.py`, with the same
queue and deadline. A revision with a `containerConcurrency` has every request
pass here (`up` keeps the activator its endpoint), and `throttle.py` holds the
limit per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from aiohttp import (
    ClientError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    ClientWebSocketResponse,
    DummyCookieJar,
    TCPConnector,
    WSServerHandshakeError,
    web,
)
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from yarl import URL

from ..model import ObjectKey
from .throttle import Lease, Throttle
from .websocket import MAX_WS_MESSAGE, WS_HANDSHAKE, relay_websocket

if TYPE_CHECKING:
    from .h2c import H2cPort

log = logging.getLogger(__name__)

REVISION_HEADER = "Knative-Serving-Revision"
NAMESPACE_HEADER = "Knative-Serving-Namespace"
# Knative's network probe: a Knative component asking "is this the activator?"
PROBE_HEADER = "K-Network-Probe"
PROBE_VALUE = "activator"

# Requests waiting for one revision to wake; Knative's activator queues many more
# per revision, but on one machine a queue this deep already means something is wrong.
QUEUE_DEPTH = 1000
# A request head as large as Envoy lets through (`max_request_headers_kb: 60`), so a
# request the gateway accepts is not refused here only because its revision was at zero.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
# Pooled connections to revisions are dropped before common servers' idle limits
# (Node's is 5 s), so a request is not sent down a connection the revision is closing.
POOL_IDLE_SECONDS = 4.0

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. `Host` is kept.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def h2c_available() -> bool:
    """Whether the h2c port can run: it needs the `h2` library."""
    return importlib.util.find_spec("h2") is not None


class Revisions(Protocol):
    """What the activator needs of the revisions (`runner.LocalRevisions` is one)."""

    async def wake(self, key: ObjectKey) -> int:
        """The local port of a running process of the revision, starting one if at zero."""
        ...

    def timeout_seconds(self, key: ObjectKey) -> float:
        """The revision's `timeoutSeconds`."""
        ...


class Refused(Exception):
    """A request answered by the activator itself, with this status and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def revision_key(headers: Mapping[str, str]) -> ObjectKey | None:
    """The revision the gateway named (`headers` looks names up case-insensitively)."""
    name = headers.get(REVISION_HEADER, "").strip()
    if not name:
        return None
    return ObjectKey(headers.get(NAMESPACE_HEADER, "").strip() or "default", name)


def _connection_tokens(headers: CIMultiDict[str]) -> set[str]:
    return {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",") if t}


def end_to_end(
    headers: CIMultiDict[str], *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The headers a proxy passes on: hop-by-hop ones and those `Connection` names left out."""
    dropped = HOP_BY_HOP | drop | _connection_tokens(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def forwarded(
    headers: CIMultiDict[str], peer: str | None, *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The request headers sent on to the revision, with the peer appended to X-Forwarded-For."""
    out = end_to_end(headers, drop=drop | {"x-forwarded-for", "expect"})
    chain = [v for v in headers.getall("X-Forwarded-For", ()) if v.strip()]
    if peer:
        chain.append(peer)
    if chain:
        out["X-Forwarded-For"] = ", ".join(chain)
    return out


def is_websocket(headers: CIMultiDict[str]) -> bool:
    upgrade = headers.get("Upgrade", "").strip().lower()
    return upgrade == "websocket" and "upgrade" in _connection_tokens(headers)


def _error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


def _upstream_url(port: int, request: web.BaseRequest) -> URL:
    # The path and query exactly as they came: the revision sees what the gateway sent.
    return URL(f"http://127.0.0.1:{port}{request.raw_path}", encoded=True)


async def _chunks(content: StreamReader) -> AsyncIterator[bytes]:
    # Whatever has arrived, at once: a streaming client's first bytes are not held back
    # waiting for more. aiohttp's reader stops reading the socket when its buffer is full.
    async for chunk in content.iter_any():
        yield chunk


class LocalActivator:
    def __init__(
        self,
        revisions: Revisions,
        *,
        queue_depth: int = QUEUE_DEPTH,
        on_demand: Callable[[ObjectKey], None] | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        """`on_demand(key)` is called for every request the activator receives for a
        revision (for an autoscaler: Knative's activator reports this demand too). With a
        `throttle`, a revision with a containerConcurrency gets at most that many requests
        in flight per process; the rest wait in its queue."""
        if queue_depth < 1:
            raise ValueError(f"activator: queue_depth must be at least 1, got {queue_depth}")
        self._revisions = revisions
        self._queue_depth = queue_depth
        self._on_demand = on_demand
        self._throttle = throttle
        self._waiting: dict[ObjectKey, int] = {}
        self._runner: web.ServerRunner | None = None
        self._session: ClientSession | None = None
        self._h2c: H2cPort | None = None
        self._h2c_port: int | None = None

    @property
    def h2c_port(self) -> int | None:
        """The h2c port, when `start` was asked for one."""
        return self._h2c_port

    def waiting(self, key: ObjectKey) -> int:
        """How many requests wait for this revision to wake (or, throttled, for a slot)."""
        return self._waiting.get(key, 0)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, h2c_port: int | None = None
    ) -> int:
        """Listen for HTTP/1.1 on `port` (and h2c on `h2c_port`, if given; 0 picks one)."""
        self._session = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_SECONDS),
            # Bodies and cookies pass through untouched: nothing decoded, nothing kept.
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),
            # How long a request may take is the gateway's and the revision's to say.
            timeout=ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )
        server = web.Server(
            self._handle,
            access_log=None,
            auto_decompress=False,
            max_line_size=MAX_HEAD_BYTES,
            max_field_size=MAX_HEAD_BYTES,
            max_headers=MAX_HEADERS,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        if h2c_port is not None:
            from .h2c import H2cPort  # needs `h2`, which only h2c revisions need

            self._h2c = H2cPort(self.admit, self.deadline, self._on_demand)
            self._h2c_port = await self._h2c.start(host, h2c_port)
        return self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._h2c is not None:
            await self._h2c.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        probe = request.headers.get(PROBE_HEADER)
        if probe == PROBE_VALUE:
            return web.Response(text=PROBE_VALUE)
        # Any other probe value is the revision's to answer (queue-proxy answers `probe`).
        key = revision_key(request.headers)
        if key is None:
            return _error(400, f"no {REVISION_HEADER} header: send requests through the gateway")
        if self._on_demand is not None:
            self._on_demand(key)
        opening = self._ws_connect if is_websocket(request.headers) else self._send
        deadline = self.deadline(key)
        with contextlib.ExitStack() as held:  # a throttled request's slot, until relayed
            try:
                async with asyncio.timeout(deadline):
                    lease = await self.admit(key)
                    held.callback(lease.release)
                    upstream = await opening(request, key, lease.port)
            except TimeoutError:  # our own deadline: the revision's TimeoutError becomes a 503
                log.warning("activator: %s did not answer within %g s", key, deadline)
                return _error(
                    504,
                    f"revision {key} did not answer within its timeoutSeconds ({deadline:g} s)",
                )
            except Refused as e:
                return _error(e.status, e.text)
            if isinstance(upstream, ClientWebSocketResponse):
                return await relay_websocket(request, upstream)
            return await _relay_response(request, key, upstream)

    def deadline(self, key: ObjectKey) -> float | None:
        """How long a request may wait for its revision to wake and start answering."""
        timeout = self._revisions.timeout_seconds(key)
        return timeout if timeout > 0 else None

    async def admit(self, key: ObjectKey) -> Lease:
        """Queue for the revision, wake it, and return where to send the request (throttled:
        a slot, to release once relayed); `Refused` when the queue is full or the revision
        cannot start."""
        limit = self._throttle.limit(key) if self._throttle is not None else 0
        waiting = self._waiting.get(key, 0)
        if waiting >= self._queue_depth:
            log.warning("activator: queue for %s is full (%d waiting)", key, waiting)
            busy = f"at its containerConcurrency ({limit})" if limit else "starting"
            raise Refused(
                503,
                f"revision {key} is {busy} and its activator queue is full "
                f"({waiting} requests waiting); retry later",
            )
        self._waiting[key] = waiting + 1
        try:
            if self._throttle is not None and limit > 0:
                return await self._throttle.acquire(key, limit)
            return Lease(await self._revisions.wake(key))
        except (LookupError, RuntimeError, OSError, TimeoutError) as e:
            log.error("activator: cannot wake %s: %s", key, e)
            raise Refused(503, f"revision {key} could not be started: {e}") from None
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    async def _send(self, request: web.BaseRequest, key: ObjectKey, port: int) -> ClientResponse:
        """Send the request on, its body streaming; return once the response head is in."""
        assert self._session is not None, "start() first"
        if request.headers.get("Expect", "").lower() == "100-continue":
            # The client waits for this before its body; the revision is not asked.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        log.info("activator: forwarding a request for %s to 127.0.0.1:%d", key, port)
        try:
            return await self._session.request(
                request.method,
                _upstream_url(port, request),
                headers=forwarded(request.headers, request.remote),
                data=_chunks(request.content) if request.body_exists else None,
                allow_redirects=False,
            )
        except ClientError as e:
            raise Refused(502, f"revision {key} failed: {e}") from None

    async def _ws_connect(
        self, request: web.BaseRequest, key: ObjectKey, port: int
    ) -> ClientWebSocketResponse:
        assert self._session is not None, "start() first"
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        log.info("activator: opening a websocket for %s to 127.0.0.1:%d", key, port)
        try:
            return await self._session.ws_connect(
                _upstream_url(port, request),
                headers=forwarded(
                    request.headers, request.remote, drop=WS_HANDSHAKE | {"sec-websocket-protocol"}
                ),
                protocols=protocols,
                max_msg_size=MAX_WS_MESSAGE,
                compress=0,
            )
        except WSServerHandshakeError as e:
            raise Refused(e.status, f"revision {key} refused the websocket: {e.message}") from None
        except ClientError as e:
            raise Refused(502, f"revision {key} failed: {e}") from None


async def _relay_response(
    request: web.BaseRequest, key: ObjectKey, upstream: ClientResponse
) -> web.StreamResponse:
    # Content-Length is kept: the body is passed on as it came, so it still holds, and
    # without it aiohttp would chunk a response the revision sent with a length.
    out = web.StreamResponse(
        status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers)
    )
    try:
        await out.prepare(request)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
    except ClientError as e:
        # The head is sent: the client can only learn of it by the connection closing.
        log.warning("activator: revision %s broke off its response: %s", key, e)
        upstream.close()
        raise
    except BaseException:
        upstream.close()  # the client went away: do not pool a half-read connection
        raise
    upstream.release()
    return out
