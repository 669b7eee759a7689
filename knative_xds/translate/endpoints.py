"""Revision + ready pods + activator → ClusterLoadAssignment.

The rule Knative expects of an ingress: while a revision has no ready pod, its
traffic goes to the activator, which buffers the request and wakes a pod; once
pods are ready, straight to them. An endpoint set is never published empty
while the activator can serve.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2

from ..model import ActivatorEndpoints, ActivatorMode, Endpoint, Revision
from ..resources import Resource
from .names import cluster_name


def choose_endpoints(
    revision: Revision,
    *,
    pods: tuple[Endpoint, ...],
    activator: ActivatorEndpoints,
    mode: ActivatorMode,
) -> tuple[Endpoint, ...]:
    via_activator = activator.for_protocol(revision.protocol)
    pinned = mode is ActivatorMode.ALWAYS or revision.activator_always
    if pods and not (pinned and via_activator):
        return pods
    return via_activator or pods


def load_assignment(
    name: str, endpoints: tuple[Endpoint, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        epc.LbEndpoint(
            endpoint=epc.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=e.address, port_value=e.port)
                )
            )
        )
        for e in sorted(endpoints)
    ]
    localities = [epc.LocalityLbEndpoints(lb_endpoints=lb_endpoints)] if lb_endpoints else []
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


def endpoints_resource(revision: Revision, endpoints: tuple[Endpoint, ...]) -> Resource:
    name = cluster_name(revision.key)
    return Resource.of(load_assignment(name, endpoints), name=name)
