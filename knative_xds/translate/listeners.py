"""The gateway's listeners: external (public hosts), internal (cluster-local hosts), and
external-tls (public hosts over HTTPS, a filter chain per certificate, chosen by SNI).

`config-xds` (GatewayOptions) adds an access log to every listener, the PROXY
protocol to the external ones and a TLS policy to the HTTPS one (access_log.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from ..model import GatewayOptions, ObjectKey, Tls
from ..resources import Resource
from .access_log import access_logs, proxy_protocol_filters, tls_parameters
from .clusters import ads_config_source
from .edge import CONNECTION_LIMIT_FILTER, EDGE, Edge, buffer_limit, connection_limit, harden
from .ext_authz import ext_authz_filters
from .names import Listener, secret_name
from .protos import pack
from .scopes import key_builder
from .tracing import apply_tracing

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_SOCKET = "envoy.transport_sockets.tls"
NO_OPTIONS = GatewayOptions()


def connection_manager(
    listener: Listener,
    edge: Edge = EDGE,
    trusted_hops: int = 0,
    options: GatewayOptions = NO_OPTIONS,
) -> hcm.HttpConnectionManager:
    name = listener.value
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        # AUTO accepts HTTP/1.1 and prior-knowledge HTTP/2, so gRPC clients work end to end.
        codec_type=hcm.HttpConnectionManager.AUTO,
        # `host:port` → `host` before the scope key is built and routes match (scopes.py).
        strip_any_host_port=True,
        # The Host header picks a scope, the scope names one Ingress's table (scopes.py).
        scoped_routes=hcm.ScopedRoutes(
            name=name,
            scope_key_builder=key_builder(listener),
            rds_config_source=ads_config_source(),
            scoped_rds=hcm.ScopedRds(scoped_rds_config_source=ads_config_source()),
        ),
        # External authorization (ext_authz.py), when configured, before the router.
        http_filters=[
            *ext_authz_filters(options),
            hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router())),
        ],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        access_log=access_logs(options),
    )
    harden(manager, edge, trusted_hops)
    apply_tracing(manager, options)  # tracing.py, when configured
    return manager


def _filters(
    listener: Listener, edge: Edge, trusted_hops: int, options: GatewayOptions
) -> list[listener_components_pb2.Filter]:
    """The connection limit first: a connection over it is closed before any parsing."""
    return [
        listener_components_pb2.Filter(
            name=CONNECTION_LIMIT_FILTER,
            typed_config=pack(connection_limit(listener.value, edge)),
        ),
        listener_components_pb2.Filter(
            name=HCM_FILTER,
            typed_config=pack(connection_manager(listener, edge, trusted_hops, options)),
        ),
    ]


def _address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def listener_resource(
    *,
    listener: Listener,
    address: str,
    port: int,
    edge: Edge = EDGE,
    trusted_hops: int = 0,
    options: GatewayOptions = NO_OPTIONS,
) -> Resource:
    # Cluster-local clients reach the internal listener directly, never through the
    # balancer that speaks the PROXY protocol.
    external = listener is not Listener.INTERNAL
    msg = listener_pb2.Listener(
        name=listener.value,
        address=_address(address, port),
        per_connection_buffer_limit_bytes=buffer_limit(edge),
        listener_filters=proxy_protocol_filters(options) if external else [],
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=_filters(listener, edge, trusted_hops, options)
            )
        ],
    )
    return Resource.of(msg, name=msg.name)


def tls_chains(entries: Iterable[tuple[ObjectKey, Tls]]) -> dict[str, tuple[str, ...]]:
    """Server names per certificate (SDS secret name), each name served by one certificate.

    Envoy refuses a listener whose filter chains match one server name twice, so
    the first entry (in Ingress order) to name a host keeps it.
    """
    taken: set[str] = set()
    chains: dict[str, list[str]] = {}
    for _, tls in sorted(entries, key=lambda e: e[0]):
        names = [h for h in tls.hosts if h not in taken]
        taken.update(names)
        if names:
            chains.setdefault(secret_name(tls.secret), []).extend(names)
    return {secret: tuple(sorted(hosts)) for secret, hosts in sorted(chains.items())}


def tls_listener_resource(
    *,
    address: str,
    port: int,
    chains: Mapping[str, tuple[str, ...]],
    edge: Edge = EDGE,
    trusted_hops: int = 0,
    options: GatewayOptions = NO_OPTIONS,
) -> Resource:
    """The HTTPS listener: by SNI, one filter chain per certificate, its hosts' scopes."""
    filter_chains = []
    for secret, hosts in chains.items():
        filter_chains.append(
            listener_components_pb2.FilterChain(
                name=secret,
                filter_chain_match=listener_components_pb2.FilterChainMatch(
                    server_names=list(hosts)
                ),
                transport_socket=sds_transport_socket(secret, options),
                filters=_filters(Listener.EXTERNAL_TLS, edge, trusted_hops, options),
            )
        )
    msg = listener_pb2.Listener(
        name=Listener.EXTERNAL_TLS.value,
        address=_address(address, port),
        per_connection_buffer_limit_bytes=buffer_limit(edge),
        # The PROXY header comes before the TLS ClientHello on the wire.
        listener_filters=[
            *proxy_protocol_filters(options),
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            ),
        ],
        filter_chains=filter_chains,
    )
    return Resource.of(msg, name=msg.name, refs=chains.keys())


def sds_transport_socket(secret: str, options: GatewayOptions) -> base_pb2.TransportSocket:
    """TLS with the certificate of SDS secret `secret`, fetched on the ADS stream, so that
    a rotation re-sends the secret alone; the TLS policy of config-xds."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_params=tls_parameters(options),
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=secret, sds_config=ads_config_source())
            ],
        )
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
