"""Tracing (`tracing-*` in config-xds): OpenTelemetry spans from every connection manager,
sent by Envoy to an OTLP collector over gRPC or OTLP/HTTP, and the collector's cluster.

The tracer is Envoy's `envoy.tracers.opentelemetry`. It starts a span per sampled
request (continuing the caller's `traceparent` when there is one) and writes the
span's context into the `traceparent` header sent upstream, so the activator and
the revision see the gateway's trace id. The sampling rate is the connection
manager's `overall_sampling`, as Kourier sets it: a cap over Envoy's own
decisions, so that neither `x-envoy-force-trace` nor `x-client-trace-id` from a
client traces a request at rate 0. The collector's cluster is named
`TRACING_CLUSTER` (no `/`, so no backend can take the name); changing the
collector re-sends the listeners and that cluster, no route table.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2, http_service_pb2, http_uri_pb2, protocol_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from ..model.types import GatewayOptions, Tracing, TracingProtocol
from ..resources import Resource
from .clusters import CONNECT_TIMEOUT_SECONDS
from .endpoints import load_assignment
from .protos import is_ip, pack

OTEL_TRACER = "envoy.tracers.opentelemetry"
TRACING_CLUSTER = "otel-collector"  # Kourier's name for it
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Kourier's export timeouts: a batch of spans over gRPC, one POST over HTTP.
GRPC_TIMEOUT_MS = 250
HTTP_TIMEOUT_MS = 5000


def _millis(ms: int) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromMilliseconds(ms)
    return out


def tracing_cluster(tracing: Tracing) -> cluster_pb2.Cluster:
    """The collector's cluster: STATIC for an IP, STRICT_DNS for a name; HTTP/2 for gRPC."""
    msg = cluster_pb2.Cluster(
        name=TRACING_CLUSTER,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_SECONDS),
        type=cluster_pb2.Cluster.STATIC if is_ip(tracing.host) else cluster_pb2.Cluster.STRICT_DNS,
        load_assignment=load_assignment(TRACING_CLUSTER, ((tracing.host, tracing.port),)),
    )
    if msg.type == cluster_pb2.Cluster.STRICT_DNS:
        msg.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    explicit = upstream_http.HttpProtocolOptions.ExplicitHttpConfig()
    if tracing.protocol is TracingProtocol.GRPC:
        explicit.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    else:
        explicit.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    options = upstream_http.HttpProtocolOptions(explicit_http_config=explicit)
    msg.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
    return msg


def tracing_cluster_resource(tracing: Tracing) -> Resource:
    return Resource.of(tracing_cluster(tracing), name=TRACING_CLUSTER)


def otel_config(tracing: Tracing) -> opentelemetry_pb2.OpenTelemetryConfig:
    """The tracer's exporter: a gRPC TraceService call, or a POST of the OTLP/HTTP path."""
    config = opentelemetry_pb2.OpenTelemetryConfig(service_name=tracing.service_name)
    if tracing.protocol is TracingProtocol.GRPC:
        config.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER),
                timeout=_millis(GRPC_TIMEOUT_MS),
            )
        )
        return config
    # The URI's host is the Host header the collector sees; the cluster is where it goes.
    host = f"[{tracing.host}]" if ":" in tracing.host else tracing.host
    config.http_service.CopyFrom(
        http_service_pb2.HttpService(
            http_uri=http_uri_pb2.HttpUri(
                uri=f"http://{host}:{tracing.port}{tracing.path}",
                cluster=TRACING_CLUSTER,
                timeout=_millis(HTTP_TIMEOUT_MS),
            )
        )
    )
    return config


def apply_tracing(manager: hcm.HttpConnectionManager, options: GatewayOptions) -> None:
    """Tracing on a connection manager, when configured; untouched (byte for byte) when not."""
    tracing = options.tracing
    if tracing is None:
        return
    # Spans are keyed by the request id: Envoy makes one for a request that has none.
    manager.generate_request_id.value = True
    manager.tracing.CopyFrom(
        hcm.HttpConnectionManager.Tracing(
            provider=http_tracer_pb2.Tracing.Http(
                name=OTEL_TRACER, typed_config=pack(otel_config(tracing))
            ),
            overall_sampling=percent_pb2.Percent(value=tracing.sampling_rate * 100),
        )
    )
