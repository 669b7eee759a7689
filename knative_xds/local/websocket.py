"""Websockets through the activator: each side's messages relayed to the other, whole."""

from __future__ import annotations

import asyncio

from aiohttp import ClientWebSocketResponse, WSMsgType, web

# A websocket message is relayed whole (aiohttp reassembles frames); this bounds it.
MAX_WS_MESSAGE = 16 * 1024 * 1024
# aiohttp negotiates these itself on each side of a websocket.
WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
    }
)


def _close_code(code: int | None) -> int:
    # 1005 and 1006 say "no code" and "no close frame": never sent in a close frame.
    if code is None or code == 1005:
        return 1000
    return 1011 if code == 1006 else code


async def _pump(
    source: web.WebSocketResponse | ClientWebSocketResponse,
    sink: web.WebSocketResponse | ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
    # The source closed (or failed): close the other side with its code.
    await sink.close(code=_close_code(source.close_code))


async def relay_websocket(
    request: web.BaseRequest, upstream: ClientWebSocketResponse
) -> web.WebSocketResponse:
    down = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        max_msg_size=MAX_WS_MESSAGE,
        compress=False,
    )
    try:
        await down.prepare(request)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_pump(down, upstream))
            tasks.create_task(_pump(upstream, down))
    finally:
        await upstream.close()
    return down
