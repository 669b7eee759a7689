"""A local activator: holds a request for a revision at zero, wakes it, then forwards.

Knative's activator does this in a cluster. Here it reads the revision from the
`Knative-Serving-Revision`/`Knative-Serving-Namespace` headers the gateway sets
on every split, starts the revision's process, and proxies the request once the
process listens. The control plane meanwhile sees the new endpoints and moves
the next requests straight to the process.
"""

from __future__ import annotations

import asyncio
import logging

from ..model import ObjectKey
from .http import Message, encode, read_message, serve
from .runner import LocalRevisions

log = logging.getLogger(__name__)


class LocalActivator:
    def __init__(self, revisions: LocalRevisions) -> None:
        self._revisions = revisions
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await serve(self._forward, host, port)
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _forward(self, request: Message) -> bytes:
        name = request.header("knative-serving-revision")
        namespace = request.header("knative-serving-namespace", "default")
        if not name:
            return _error(
                "400 Bad Request",
                "no Knative-Serving-Revision header: send requests through the gateway",
            )
        key = ObjectKey(namespace, name)
        try:
            port = await self._revisions.wake(key)
        except (LookupError, RuntimeError, TimeoutError) as e:
            log.error("activator: cannot wake %s: %s", key, e)
            return _error("503 Service Unavailable", f"revision {key} could not be started: {e}")
        log.info("activator: forwarding a request for %s to 127.0.0.1:%d", key, port)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            headers = tuple((k, v) for k, v in request.headers if k.lower() != "connection")
            w.write(encode(request.start, (*headers, ("Connection", "close")), request.body))
            await w.drain()
            response = await read_message(r, until_eof=True)
            w.close()
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            return _error("502 Bad Gateway", f"revision {key} failed: {e}")
        if response is None:
            return _error("502 Bad Gateway", f"revision {key} closed without answering")
        return encode(response.start, response.headers, response.body)


def _error(status: str, text: str) -> bytes:
    return encode(f"HTTP/1.1 {status}", (("Content-Type", "text/plain"),), text.encode() + b"\n")
