"""grpc, grpc/split, websocket and websocket/split (grpc.go, websocket.go): long-lived
streams through the gateway, and a split chosen once per stream."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from .env import DOMAIN, Conformance, object_name, rule, split
from .ping import PING_STREAM, PingRequest, PingResponse

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

STREAM_SECONDS = 60.0  # Go: context.WithTimeout(ctx, 60*time.Second)


def _spec(host: str, *splits: dict) -> dict:
    return {"rules": [rule([host], [{"splits": list(splits)}])]}


def _message() -> str:
    return f"ping -{random.randrange(1000)}"


# -- gRPC ------------------------------------------------------------------------------


def _ping_stream(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    call = channel.stream_stream(
        PING_STREAM,
        request_serializer=PingRequest.SerializeToString,
        response_deserializer=PingResponse.FromString,
    )
    return call()


async def _grpc_round_trip(stream: grpc.aio.StreamStreamCall) -> tuple[str, str]:
    message = _message()
    await stream.write(PingRequest(msg=message))
    reply = await stream.read()
    assert reply is not grpc.aio.EOF, "the stream ended"
    return message, reply.msg


async def _check_grpc(stream: grpc.aio.StreamStreamCall, suffix: str) -> None:
    message, got = await _grpc_round_trip(stream)
    assert got == message + suffix, f"Recv() = {got}, wanted {message + suffix}"


async def test_grpc(env: Conformance) -> None:
    suffix = "- pong"
    name, port = await env.create_grpc_service("grpc", suffix)
    domain = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("grpc", _spec(domain, split(name, port)))
    async with asyncio.timeout(STREAM_SECONDS):
        stream = _ping_stream(client.grpc_channel(domain))
        for _ in range(100):
            await _check_grpc(stream, suffix)
        await stream.done_writing()


async def test_grpc_split(env: Conformance) -> None:
    """50/50 over two backends: within 100 streams both answer, each for all of its stream."""
    (blue, blue_port), (green, green_port) = await asyncio.gather(
        env.create_grpc_service("grpc/split", "- blue"),
        env.create_grpc_service("grpc/split", "- green"),
    )
    domain = f"{object_name('grpc/split')}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "grpc/split",
        _spec(domain, split(blue, blue_port, percent=50), split(green, green_port, percent=50)),
    )
    want, got = {"- blue", "- green"}, set()
    channel = client.grpc_channel(domain)
    async with asyncio.timeout(STREAM_SECONDS):
        for _ in range(100):
            stream = _ping_stream(channel)
            message, reply = await _grpc_round_trip(stream)
            assert reply.startswith(message), f"Recv() = {reply}, wanted {message} prefix"
            suffix = reply.removeprefix(message).strip()
            got.add(suffix)
            for _ in range(10):
                await _check_grpc(stream, suffix)
            await stream.done_writing()
            if got == want:
                break
    assert got == want, f"(over 100 requests) want {want}, got {got}"


# -- websockets ------------------------------------------------------------------------


async def _ws_round_trip(ws: object) -> tuple[str, str]:
    message = _message()
    await ws.send_str(message)  # type: ignore[attr-defined]
    return message, await ws.receive_str()  # type: ignore[attr-defined]


async def _check_ws(ws: object, suffix: str) -> None:
    message, got = await _ws_round_trip(ws)
    assert got == f"{message} {suffix}", f"ReadMessage() = {got}, wanted {message} {suffix}"


async def test_websocket(env: Conformance) -> None:
    suffix = "- pong"
    name, port = await env.create_websocket_service("websocket", suffix)
    domain = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("websocket", _spec(domain, split(name, port)))
    async with asyncio.timeout(STREAM_SECONDS), client.ws_connect(f"ws://{domain}/") as ws:
        for _ in range(100):
            await _check_ws(ws, suffix)


async def test_websocket_split(env: Conformance) -> None:
    """50/50 over two backends: within 100 connections both answer, each for all of its
    connection."""
    (blue, blue_port), (green, green_port) = await asyncio.gather(
        env.create_websocket_service("websocket/split", "- blue"),
        env.create_websocket_service("websocket/split", "- green"),
    )
    domain = f"{object_name('websocket/split')}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "websocket/split",
        _spec(domain, split(blue, blue_port, percent=50), split(green, green_port, percent=50)),
    )
    want, got = {"- blue", "- green"}, set()
    async with asyncio.timeout(STREAM_SECONDS):
        for _ in range(100):
            async with client.ws_connect(f"ws://{domain}/") as ws:
                message, reply = await _ws_round_trip(ws)
                assert reply.startswith(message), (
                    f"ReadMessage() = {reply}, wanted {message} prefix"
                )
                suffix = reply.removeprefix(message).strip()
                got.add(suffix)
                for _ in range(10):
                    await _check_ws(ws, suffix)
            if got == want:
                break
    assert got == want, f"(over 100 requests) want {sorted(want)}, got {sorted(got)}"
