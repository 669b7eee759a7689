"""The gateway's two listeners: external (public hosts) and internal (cluster-local hosts)."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import any_pb2

from ..model import Visibility
from ..resources import Resource
from .clusters import ads_config_source
from .scopes import key_builder

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def connection_manager(name: str, visibility: Visibility) -> hcm.HttpConnectionManager:
    return hcm.HttpConnectionManager(
        stat_prefix=name,
        # AUTO accepts HTTP/1.1 and prior-knowledge HTTP/2, so gRPC clients work end to end.
        codec_type=hcm.HttpConnectionManager.AUTO,
        # `host:port` → `host` before the scope key is built and routes match (scopes.py).
        strip_any_host_port=True,
        # The Host header picks a scope, the scope names one Route's table (scopes.py).
        scoped_routes=hcm.ScopedRoutes(
            name=name,
            scope_key_builder=key_builder(visibility),
            rds_config_source=ads_config_source(),
            scoped_rds=hcm.ScopedRds(scoped_rds_config_source=ads_config_source()),
        ),
        http_filters=[hcm.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )


def listener(
    *, name: str, address: str, port: int, visibility: Visibility
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER, typed_config=_pack(connection_manager(name, visibility))
                    )
                ]
            )
        ],
    )


def listener_resource(*, name: str, address: str, port: int, visibility: Visibility) -> Resource:
    msg = listener(name=name, address=address, port=port, visibility=visibility)
    return Resource.of(msg, name=name)
