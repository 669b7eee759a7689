"""A small HTTP endpoint for probes and operators: /healthz, /ready, /debug/status.

/ready answers 200 only once the first complete state is loaded, so a rolling
update never sends gateways to a replica that would serve them nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .app import ControlPlane
from .resources import short


def status(plane: ControlPlane) -> dict[str, Any]:
    snapshot = plane.cache.current()
    return {
        "instance": plane.cache.instance,
        "ready": plane.loaded.is_set(),
        "snapshot": snapshot.serial if snapshot else None,
        "resources": {short(t): len(m) for t, m in snapshot.resources.items()} if snapshot else {},
        "problems": [str(p) for p in plane.pipeline.problems()],
        "streams": [
            {
                "id": s.status.id,
                "node": s.status.node_id,
                "peer": s.status.peer,
                "protocol": "delta" if s.status.delta else "sotw",
                "types": {
                    short(t): {
                        "last_nonce": sub.last_nonce,
                        "acked_version": sub.acked_version,
                        "last_nack": sub.last_nack.message if sub.last_nack else None,
                    }
                    for t, sub in s.subs.items()
                },
            }
            for s in plane.ads.streams.values()
        ],
        "kingresses": plane.reporter.summary() if plane.reporter is not None else None,
        "nacks": [
            {"node": node, "type": short(t), "error": n.message, "version": n.version}
            for (node, t), n in plane.ads.nacks.items()
        ],
    }


async def serve_health(plane: ControlPlane, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            code, body = _route(plane, path)
            head = f"HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _route(plane: ControlPlane, path: str) -> tuple[str, bytes]:
    if path == "/healthz":
        return "200 OK", b'{"ok": true}'
    if path == "/ready":
        ok = plane.loaded.is_set() and plane.cache.current() is not None
        return (
            ("200 OK", b'{"ready": true}')
            if ok
            else ("503 Service Unavailable", b'{"ready": false}')
        )
    if path == "/debug/status":
        return "200 OK", json.dumps(status(plane), indent=2).encode()
    return "404 Not Found", b'{"error": "try /healthz, /ready or /debug/status"}'
