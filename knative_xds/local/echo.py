"""A tiny app that answers every request with who it is and what it got, as JSON.

It stands in for a revision's container (`PORT` from the environment, as
Knative gives it) and, in tests, for the activator. Run it with
`python -m knative_xds.local.echo --name hello-00001`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os

from .http import Message, encode, serve


def answer(name: str, start: str, headers: tuple[tuple[str, str], ...], body: bytes) -> bytes:
    method, _, rest = start.partition(" ")
    payload = {
        "revision": name,
        "method": method,
        "path": rest.rsplit(" ", 1)[0],
        "headers": {k.lower(): v for k, v in headers},
        "body_bytes": len(body),
    }
    data = json.dumps(payload).encode() + b"\n"
    return encode("HTTP/1.1 200 OK", (("Content-Type", "application/json"),), data)


async def serve_echo(name: str, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    async def handle(msg: Message) -> bytes:
        return answer(name, msg.start, msg.headers, msg.body)

    return await serve(handle, host, port)


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
