"""A local OTLP trace receiver on 127.0.0.1, its port chosen at run time: the gRPC
TraceService (`opentelemetry.proto.collector.trace.v1`) or OTLP/HTTP protobuf POSTs of
`/v1/traces` (aiohttp). It keeps every span it is sent, in arrival order.

The messages are the OpenTelemetry protos that xds-protos bundles (Envoy's own
OpenTelemetry extensions import them), so no second package owns those files.
xds-protos has no gRPC stubs for them: the servicer is a generic handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as collector
from opentelemetry.proto.trace.v1 import trace_pb2

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
# xds-protos bundles an older OTLP, where ResourceSpans' field 2 (today's `scope_spans`)
# is `instrumentation_library_spans`: the same wire format under its old name.
_SCOPES = next(
    name
    for name in ("scope_spans", "instrumentation_library_spans")
    if name in trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name
)
HTTP_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service_name: str
    trace_id: str  # 32 hex digits, as in `traceparent`
    span_id: str
    name: str
    attributes: dict[str, str]


@dataclass
class Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, request: collector.ExportTraceServiceRequest) -> None:
        self.requests += 1
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in getattr(resource_spans, _SCOPES):
                self.spans.extend(_span(attrs.get("service.name", ""), s) for s in scope.spans)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 15) -> list[ReceivedSpan]:
        """The first `count` spans, once that many have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.spans) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.spans[:count]


def _span(service: str, span: trace_pb2.Span) -> ReceivedSpan:
    return ReceivedSpan(
        service_name=service,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        name=span.name,
        attributes={a.key: a.value.string_value for a in span.attributes},
    )


@contextlib.asynccontextmanager
async def grpc_receiver() -> AsyncIterator[tuple[int, Received]]:
    received = Received()

    async def export(request: collector.ExportTraceServiceRequest, context):
        received.take(request)
        return collector.ExportTraceServiceResponse()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=collector.ExportTraceServiceRequest.FromString,
                response_serializer=collector.ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, received
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[tuple[int, Received]]:
    received = Received()

    async def export(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"not protobuf: {request.content_type}")
        received.take(collector.ExportTraceServiceRequest.FromString(await request.read()))
        body = collector.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post(HTTP_PATH, export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, received
    finally:
        await runner.cleanup()
