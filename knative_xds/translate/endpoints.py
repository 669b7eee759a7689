"""Chosen endpoints → ClusterLoadAssignment.

Which endpoints a backend gets (a revision's pods, or the activator while it
has none) is the model's decision (model/backends.py); this only builds the
message.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2

from ..model import Endpoint
from ..resources import Resource


def load_assignment(
    name: str, endpoints: Iterable[Endpoint | tuple[str, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        epc.LbEndpoint(
            endpoint=epc.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=address, port_value=port)
                )
            )
        )
        for address, port in sorted(
            (e.address, e.port) if isinstance(e, Endpoint) else e for e in endpoints
        )
    ]
    localities = [epc.LocalityLbEndpoints(lb_endpoints=lb_endpoints)] if lb_endpoints else []
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


def endpoints_resource(name: str, endpoints: tuple[Endpoint, ...]) -> Resource:
    return Resource.of(load_assignment(name, endpoints), name=name)
