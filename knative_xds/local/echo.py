"""A tiny app that answers every request with who it is and what it got, as JSON.

It stands in for a revision's container (`PORT` from the environment, as
Knative gives it) and, in tests, for the activator. Run it with
`python -m knative_xds.local.echo --name hello-00001`.

The answer is `{"revision", "method", "path", "headers", "body_bytes", "pid"}`: `path`
is the request target as sent (query included), `headers` has lower-case names,
and the body is counted as it streams in, never held; `?sleep=SECONDS` delays the
answer (at most a minute). A websocket upgrade is
accepted and every message is sent back as it came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Mapping

from aiohttp import WSMsgType, web


def answer(
    name: str, *, method: str, path: str, headers: Mapping[str, str], body_bytes: int
) -> dict:
    return {
        "revision": name,
        "method": method,
        "path": path,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body_bytes": body_bytes,
        "pid": os.getpid(),  # which process answered, when a revision runs several
    }


async def _echo_websocket(request: web.BaseRequest) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def handler(name: str):
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _echo_websocket(request)
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        if "sleep" in request.query:  # `?sleep=SECONDS`: a slow answer, to load a revision
            try:
                await asyncio.sleep(min(max(float(request.query["sleep"]), 0.0), 60.0))
            except ValueError:
                return web.Response(status=400, text="?sleep= takes a number of seconds\n")
        payload = answer(
            name,
            method=request.method,
            path=request.raw_path,
            headers=request.headers,
            body_bytes=size,
        )
        return web.Response(text=json.dumps(payload) + "\n", content_type="application/json")

    return handle


async def serve_echo(name: str, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(web.Server(handler(name), access_log=None), host, port)


def bound_port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


async def _main(name: str, host: str, port: int) -> None:
    server = await serve_echo(name, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Answer every HTTP request with this revision's name and the request's headers."
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("K_REVISION", "echo"),
        help="the name to answer with (default: $K_REVISION)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8080")), help="default: $PORT"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.name, args.host, args.port))


if __name__ == "__main__":
    main()
