"""The grpc-ping image: `ping.PingService` on grpcio, messages built from a descriptor.

`PingStream` answers every request with its `msg` + the suffix (Go appends the
host name only when asked to, which the conformance suite never does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .backends import Served


def _ping_messages() -> tuple[type, type]:
    """`ping.Request` and `ping.Response` ({string msg = 1}) from a descriptor built here."""
    proto = descriptor_pb2.FileDescriptorProto(name="ping.proto", package="ping", syntax="proto3")
    for name in ("Request", "Response"):
        message = proto.message_type.add(name=name)
        message.field.add(
            name="msg",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ping.{n}"))
        for n in ("Request", "Response")
    )


PingRequest, PingResponse = _ping_messages()
PING_STREAM = "/ping.PingService/PingStream"


async def serve_grpc_ping(suffix: str) -> Served:
    def pong(request: Any) -> Any:
        return PingResponse(msg=request.msg + suffix)

    async def ping(request: Any, _context: grpc.aio.ServicerContext) -> Any:
        return pong(request)

    async def ping_stream(
        requests: AsyncIterator[Any], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield pong(request)

    handler = grpc.method_handlers_generic_handler(
        "ping.PingService",
        {
            "Ping": grpc.unary_unary_rpc_method_handler(
                ping,
                request_deserializer=PingRequest.FromString,
                response_serializer=PingResponse.SerializeToString,
            ),
            "PingStream": grpc.stream_stream_rpc_method_handler(
                ping_stream,
                request_deserializer=PingRequest.FromString,
                response_serializer=PingResponse.SerializeToString,
            ),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def stop() -> None:
        await server.stop(0)

    return Served(port, stop)
