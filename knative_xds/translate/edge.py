"""The gateway is an internet-facing edge, not a mesh sidecar: the limits that make it one.

Envoy's defaults trust whoever connects. Every value here is set on the gateway's
listeners, connection managers and clusters (and the bootstrap's overload manager),
each with the attack it stops, following Envoy's "Configuring Envoy as an edge
proxy" guide. Knative adds one rule: no limit may cut a request that the revision's
timeout allows (route timeout 0, the route's own idle timeout; see routes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import duration_pb2, wrappers_pb2

CONNECTION_LIMIT_FILTER = "envoy.filters.network.connection_limit"


@dataclass(frozen=True, slots=True)
class Edge:
    """The edge limits of every gateway listener. Times in seconds."""

    # Slowloris: a client that dribbles its request headers holds a connection and a
    # stream for ever; it is answered 408 and closed once this passes.
    request_headers_timeout: float = 10.0
    # A stream that sends and receives nothing (a stalled client or backend) is reset
    # after this; 0 turns it off. A route whose revision has a timeout sets its own idle
    # timeout to it (routes.py), so this applies only to routes with timeout 0, which
    # Knative means as "no limit": a KIngress carries no revision timeout (queue-proxy
    # enforces it) and its revisions may allow up to max-revision-timeout-seconds, so
    # Envoy's 300 s default would cut idle websockets and slow answers that they allow.
    # Slow clients are stopped by the request-headers timeout and the buffer limits.
    stream_idle_timeout: float = 0.0
    # A keep-alive connection with no stream in flight is closed after this, so idle
    # connections cannot pile up to the connection limit. Never cuts a request.
    connection_idle_timeout: float = 3600.0
    # Header flood: thousands of small headers or a few huge ones cost memory and CPU
    # per request; beyond these the request gets 431.
    max_headers_count: int = 100
    max_request_headers_kb: int = 60
    # HTTP/2 abuse: one connection opening unbounded streams, or windows that let a
    # client make Envoy buffer megabytes per stream before backpressure applies.
    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 65_536
    initial_connection_window_size: int = 1_048_576
    # Memory per connection: a slow reader (or writer) makes Envoy buffer at most
    # this per connection before it stops reading, on listeners and on clusters.
    per_connection_buffer_limit_bytes: int = 32_768
    # Connection floods against one listener; the bootstrap's overload manager caps
    # all listeners together (envoy.py). A connection beyond this is closed at once.
    max_connections_per_listener: int = 50_000


EDGE = Edge()


def _seconds(value: float) -> duration_pb2.Duration:
    whole = int(value)
    return duration_pb2.Duration(seconds=whole, nanos=round((value - whole) * 1e9))


def harden(manager: hcm.HttpConnectionManager, edge: Edge, trusted_hops: int) -> None:
    """Set the edge settings on a listener's connection manager, in place."""
    # X-Forwarded-For spoofing: Envoy appends the peer's real address and, with
    # `trusted_hops` load balancers in front, trusts only that many entries from
    # the right; a client cannot make itself look internal or like someone else.
    manager.use_remote_address.CopyFrom(wrappers_pb2.BoolValue(value=True))
    manager.xff_num_trusted_hops = trusted_hops
    # Path confusion (`/a/../b`, `/a//b`): routes match the path the backend will
    # see, so a prefix rule cannot be stepped around with dot segments or slashes.
    manager.normalize_path.CopyFrom(wrappers_pb2.BoolValue(value=True))
    manager.merge_slashes = True
    # `/a/..%2Fb`: matched as /a by a proxy but read as /b by many backends. The
    # client is redirected to the unescaped, normalized path instead, so the request
    # that reaches a backend is the one its route was chosen for; clients that
    # follow redirects (Knative's conformance ones do) still get their answer.
    manager.path_with_escaped_slashes_action = (
        hcm.HttpConnectionManager.PathWithEscapedSlashesAction.UNESCAPE_AND_REDIRECT
    )
    manager.request_headers_timeout.CopyFrom(_seconds(edge.request_headers_timeout))
    manager.stream_idle_timeout.CopyFrom(_seconds(edge.stream_idle_timeout))
    common = manager.common_http_protocol_options
    common.idle_timeout.CopyFrom(_seconds(edge.connection_idle_timeout))
    common.max_headers_count.value = edge.max_headers_count
    # Header smuggling: `x_forwarded_for` and `x-forwarded-for` are one header to some
    # backends and two to others (CGI maps `-` to `_`); refuse the ambiguity (400).
    common.headers_with_underscores_action = (
        protocol_pb2.HttpProtocolOptions.HeadersWithUnderscoresAction.REJECT_REQUEST
    )
    manager.max_request_headers_kb.value = edge.max_request_headers_kb
    manager.http2_protocol_options.CopyFrom(http2_options(edge))


def http2_options(edge: Edge) -> protocol_pb2.Http2ProtocolOptions:
    return protocol_pb2.Http2ProtocolOptions(
        max_concurrent_streams=wrappers_pb2.UInt32Value(value=edge.max_concurrent_streams),
        initial_stream_window_size=wrappers_pb2.UInt32Value(value=edge.initial_stream_window_size),
        initial_connection_window_size=wrappers_pb2.UInt32Value(
            value=edge.initial_connection_window_size
        ),
    )


def connection_limit(stat_prefix: str, edge: Edge) -> connection_limit_pb2.ConnectionLimit:
    return connection_limit_pb2.ConnectionLimit(
        stat_prefix=stat_prefix,
        max_connections=wrappers_pb2.UInt64Value(value=edge.max_connections_per_listener),
    )


def buffer_limit(edge: Edge = EDGE) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=edge.per_connection_buffer_limit_bytes)
