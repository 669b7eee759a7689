"""The cluster-local listener over TLS: `cluster-cert-secret` in config-xds (model/cluster_cert.py).

One filter chain, no SNI match: one certificate for every cluster-local host,
as Kourier serves it (its port, 8444, is the default). The connection manager
is the internal listener's, so both listeners route through the same scoped
route configuration (`internal`): the same scopes and route tables, so an
edit to a Route re-sends its table once for both. The
certificate comes over SDS on the ADS stream (listeners.sds_transport_socket),
so a rotation re-sends the secret alone and Envoy serves it on the next
handshake, with no listener change. The listener is built only while its
secret is served (the translator checks): Envoy keeps a listener warming until
its SDS secret arrives, and a starting Envoy waits for its first listeners to
warm before it serves any of them, so a name that never resolves would hold
the whole gateway back until the initial fetch timeout (15 s).
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from ..model import GatewayOptions
from ..resources import Resource
from .edge import CONNECTION_LIMIT_FILTER, EDGE, Edge, buffer_limit, connection_limit
from .listeners import HCM_FILTER, NO_OPTIONS, connection_manager, sds_transport_socket
from .names import Listener
from .protos import pack

INTERNAL_TLS = "internal-tls"


def internal_tls_listener_resource(
    *,
    address: str,
    port: int,
    secret: str,
    edge: Edge = EDGE,
    trusted_hops: int = 0,
    options: GatewayOptions = NO_OPTIONS,
) -> Resource:
    """The `internal-tls` listener: the internal listener's routes, TLS with SDS `secret`."""
    manager = connection_manager(Listener.INTERNAL, edge, trusted_hops, options)
    # Its own HTTP stats (`http.internal-tls.*`), apart from the plain listener's.
    manager.stat_prefix = INTERNAL_TLS
    chain = listener_components_pb2.FilterChain(
        name=secret,
        transport_socket=sds_transport_socket(secret, options),
        filters=[
            # The connection limit first: a connection over it is closed before any parsing.
            listener_components_pb2.Filter(
                name=CONNECTION_LIMIT_FILTER,
                typed_config=pack(connection_limit(INTERNAL_TLS, edge)),
            ),
            listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager)),
        ],
    )
    msg = listener_pb2.Listener(
        name=INTERNAL_TLS,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=port)
        ),
        per_connection_buffer_limit_bytes=buffer_limit(edge),
        # Cluster-local clients reach it directly, never through a PROXY-speaking balancer.
        filter_chains=[chain],
    )
    return Resource.of(msg, name=INTERNAL_TLS, refs=(secret,))
