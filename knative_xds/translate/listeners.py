"""The gateway's two listeners: external (public hosts) and internal (cluster-local hosts)."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import any_pb2

from ..resources import Resource
from .clusters import ads_config_source

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def connection_manager(route_table: str) -> hcm.HttpConnectionManager:
    return hcm.HttpConnectionManager(
        stat_prefix=route_table,
        # AUTO accepts HTTP/1.1 and prior-knowledge HTTP/2, so gRPC clients work end to end.
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(config_source=ads_config_source(), route_config_name=route_table),
        http_filters=[hcm.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )


def listener(*, name: str, address: str, port: int, route_table: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER, typed_config=_pack(connection_manager(route_table))
                    )
                ]
            )
        ],
    )


def listener_resource(*, name: str, address: str, port: int, route_table: str) -> Resource:
    msg = listener(name=name, address=address, port=port, route_table=route_table)
    return Resource.of(msg, name=name, refs=(route_table,))
