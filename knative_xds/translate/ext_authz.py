"""External authorization (`extauthz-*` in config-xds): Envoy's ext_authz filter and the
cluster of the authorizer it asks.

The filter sits in every connection manager before the router, towards one
cluster named `EXT_AUTHZ_CLUSTER` (no `/`, so no backend can take the name).
Knative's own probes skip it: Knative's prober sends `K-Network-Probe: probe`
(with `K-Network-Hash: override`), and an authorizer that refused those would
leave every KIngress unready. The skip is a matcher on that request header,
on the listener: no route table changes when the authorizer does. A client
that sends the header itself skips the check too, but Knative's queue-proxy
and activator answer such a request themselves; it does not reach the app.
The route that only matches `K-Network-Hash: override` keeps the check, since
that header alone does reach the app.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    http_uri_pb2,
    protocol_pb2,
)
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2, duration_pb2
from xds.core.v3 import extension_pb2 as xds_extension
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string

from ..model.types import ExtAuthz, ExtAuthzProtocol, GatewayOptions
from ..resources import Resource
from .clusters import CONNECT_TIMEOUT_SECONDS
from .endpoints import load_assignment
from .protos import is_ip, pack

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_AUTHZ_CLUSTER = "ext-authz"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS_SOCKET = "envoy.transport_sockets.tls"
# knative.dev/networking's header.ProbeKey and header.ProbeValue: what its prober sends.
PROBE_HEADER = "K-Network-Probe"
PROBE_VALUE = "probe"


def _protocol_options(protocol: ExtAuthzProtocol) -> any_pb2.Any:
    """gRPC needs HTTP/2; an HTTP authorizer gets HTTP/1.1, as Kourier gives it."""
    explicit = upstream_http.HttpProtocolOptions.ExplicitHttpConfig()
    if protocol is ExtAuthzProtocol.GRPC:
        explicit.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    else:
        explicit.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    return pack(upstream_http.HttpProtocolOptions(explicit_http_config=explicit))


def ext_authz_cluster(ext: ExtAuthz) -> cluster_pb2.Cluster:
    """The authorizer's cluster: its one address inline, STATIC for an IP, STRICT_DNS
    for a name (re-resolved by Envoy, as Kourier's is)."""
    msg = cluster_pb2.Cluster(
        name=EXT_AUTHZ_CLUSTER,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_SECONDS),
        type=cluster_pb2.Cluster.STATIC if is_ip(ext.host) else cluster_pb2.Cluster.STRICT_DNS,
        load_assignment=load_assignment(EXT_AUTHZ_CLUSTER, ((ext.host, ext.port),)),
    )
    if msg.type == cluster_pb2.Cluster.STRICT_DNS:
        msg.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    msg.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(_protocol_options(ext.protocol))
    if ext.protocol is ExtAuthzProtocol.HTTPS:
        # TLS to the authorizer, with its name as SNI. No CA is configured, so its
        # certificate is not verified (Kourier's `https` sends plain HTTP).
        context = tls_pb2.UpstreamTlsContext(sni="" if is_ip(ext.host) else ext.host)
        msg.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name=_TLS_SOCKET, typed_config=pack(context))
        )
    return msg


def ext_authz_cluster_resource(ext: ExtAuthz) -> Resource:
    return Resource.of(ext_authz_cluster(ext), name=EXT_AUTHZ_CLUSTER)


def ext_authz_config(ext: ExtAuthz) -> ext_authz_pb2.ExtAuthz:
    """Kourier's filter: its body limit (partial bodies sent), failure mode and timeout."""
    timeout = duration_pb2.Duration()
    timeout.FromMilliseconds(ext.timeout_ms)
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=ext.failure_mode_allow,
        with_request_body=ext_authz_pb2.BufferSettings(
            max_request_bytes=ext.max_request_bytes, allow_partial_message=True
        ),
    )
    if ext.protocol is ExtAuthzProtocol.GRPC:
        config.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXT_AUTHZ_CLUSTER),
                timeout=timeout,
            )
        )
        return config
    # The URI's host is what the authorizer sees; the cluster is where it is sent.
    host = f"[{ext.host}]" if ":" in ext.host else ext.host
    config.http_service.CopyFrom(
        ext_authz_pb2.HttpService(
            server_uri=http_uri_pb2.HttpUri(
                uri=f"{ext.protocol.value}://{host}:{ext.port}",
                cluster=EXT_AUTHZ_CLUSTER,
                timeout=timeout,
            ),
            path_prefix=ext.path_prefix,
        )
    )
    return config


def _skip_probes() -> matcher_pb2.Matcher:
    """A request with Knative's probe header skips the filter."""
    header = http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=PROBE_HEADER.lower())
    predicate = matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=xds_extension.TypedExtensionConfig(
                name="probe-header", typed_config=pack(header)
            ),
            value_match=xds_string.StringMatcher(exact=PROBE_VALUE),
        )
    )
    skip = xds_extension.TypedExtensionConfig(
        name="skip", typed_config=pack(skip_action_pb2.SkipFilter())
    )
    return matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(
                    predicate=predicate, on_match=matcher_pb2.Matcher.OnMatch(action=skip)
                )
            ]
        )
    )


def ext_authz_filters(options: GatewayOptions) -> list[hcm.HttpFilter]:
    """The ext_authz filter (wrapped so that probes skip it), or none when it is off."""
    if options.ext_authz is None:
        return []
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=_skip_probes(),
        extension_config=extension_pb2.TypedExtensionConfig(
            name=EXT_AUTHZ_FILTER, typed_config=pack(ext_authz_config(options.ext_authz))
        ),
    )
    return [hcm.HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=pack(wrapped))]
