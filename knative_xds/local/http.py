"""Just enough HTTP/1.1 for the local stand-ins: read one request or response off a stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    start: str  # request line or status line
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), default)

    @property
    def keep_alive(self) -> bool:
        version = (
            self.start.split(" ", 1)[0]
            if self.start.startswith("HTTP/")
            else self.start.rsplit(" ", 1)[-1]
        )
        conn = self.header("connection").lower()
        return conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"


async def read_message(reader: asyncio.StreamReader, *, until_eof: bool = False) -> Message | None:
    """One message; None on a clean close before it starts. Bodies: Content-Length, chunked or EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise
    if len(head) > MAX_HEAD:
        raise ValueError("header too large")
    lines = head.decode("latin-1").split("\r\n")
    headers = tuple(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)
    )
    msg = Message(lines[0], headers, b"")
    if msg.header("transfer-encoding").lower() == "chunked":
        body = await _read_chunked(reader)
    elif msg.header("content-length"):
        body = await reader.readexactly(int(msg.header("content-length")))
    elif until_eof:
        body = await reader.read()
    else:
        body = b""
    return Message(msg.start, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"}


def encode(start: str, headers: tuple[tuple[str, str], ...], body: bytes) -> bytes:
    kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    kept.append(("Content-Length", str(len(body))))
    head = start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n"
    return head.encode("latin-1") + body


Handler = Callable[[Message], Awaitable[bytes]]


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Answer requests on keep-alive connections, one at a time per connection."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_message(reader)) is not None:
                writer.write(await handler(request))
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the peer went away or sent garbage: drop this connection only
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port)
