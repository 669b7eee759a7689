"""Clusters and endpoint sets, compared as whole Envoy messages.

One EDS cluster per revision a Route uses; its endpoints are the ready pods, or
the activator while there are none (or always, when the activator is pinned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from google.protobuf import duration_pb2, wrappers_pb2

from knative_xds import synth
from knative_xds.model import ActivatorMode
from knative_xds.model.kinds import BURST_CAPACITY_ANNOTATION
from knative_xds.resources import CLUSTER, ENDPOINT
from knative_xds.translate.edge import buffer_limit
from tests.helpers import ads, assert_proto_equal, packed, translated, world

T = synth.target


# -- clusters ------------------------------------------------------------------------------------


def want_cluster(name: str, *, h2c: bool = False) -> cluster_pb2.Cluster:
    limit = wrappers_pb2.UInt32Value(value=1 << 20)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=duration_pb2.Duration(seconds=5),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=limit, max_pending_requests=limit, max_requests=limit
                )
            ]
        ),
        per_connection_buffer_limit_bytes=buffer_limit(),
    )
    if h2c:
        options = upstream_http.HttpProtocolOptions(
            explicit_http_config=upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster.typed_extension_protocol_options[key].CopyFrom(packed(options))
    return cluster


CLUSTERS = {
    "http1-revision": (synth.revision("web-1"), "default/web-1", False),
    "h2c-revision-speaks-http2-upstream": (
        synth.revision("grpc-1", h2c=True),
        "default/grpc-1",
        True,
    ),
    "other-namespace": (synth.revision("web-1", namespace="team"), "team/web-1", False),
}


@pytest.mark.parametrize(("revision", "name", "h2c"), CLUSTERS.values(), ids=CLUSTERS.keys())
def test_cluster_per_revision_is_eds_over_ads(revision: dict, name: str, h2c: bool) -> None:
    rev_name = revision["metadata"]["name"]
    ns = revision["metadata"]["namespace"]
    gateway = translated(revision, synth.route("r", [T(rev_name, 100)], namespace=ns))
    assert gateway.names(CLUSTER) == {name}
    assert_proto_equal(gateway.get(CLUSTER, name, cluster_pb2.Cluster), want_cluster(name, h2c=h2c))


def test_only_revisions_a_route_uses_get_clusters() -> None:
    objs = [*world(), synth.revision("idle-1"), synth.route("hello", [T("hello-1", 100)])]
    gateway = translated(*objs, synth.route("two", [T("hello-1", 100), T("hello-2", 0, tag="b")]))
    assert (
        gateway.names(CLUSTER) == gateway.names(ENDPOINT) == {"default/hello-1", "default/hello-2"}
    )


# -- endpoints -----------------------------------------------------------------------------------


def want_endpoints(name: str, *endpoints: tuple[str, int]) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        epc.LbEndpoint(
            endpoint=epc.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=a, port_value=p)
                )
            )
        )
        for a, p in endpoints
    ]
    localities = [epc.LocalityLbEndpoints(lb_endpoints=lb)] if lb else []
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


PODS = synth.endpoint_slice("web-1", ["10.0.0.2", "10.0.0.1"], 8012)
NOT_READY = synth.endpoint_slice("web-1", [], 8012, not_ready=["10.0.0.1"])
H2C_PODS = synth.endpoint_slice("web-1", ["10.0.0.1"], 8013, port_name="http2")
ACTIVATOR = synth.activator_slice("10.1.0.1", 8012, 8013)
POD_EPS = (("10.0.0.1", 8012), ("10.0.0.2", 8012))
PINNED = {BURST_CAPACITY_ANNOTATION: "-1"}


@dataclass(frozen=True)
class Eps:
    objects: list[dict[str, Any]]
    want: tuple[tuple[str, int], ...]
    mode: ActivatorMode = ActivatorMode.AT_ZERO
    revision: dict[str, Any] = field(default_factory=lambda: synth.revision("web-1"))


ENDPOINTS = {
    "pods-when-ready-pods-exist": Eps([PODS, ACTIVATOR], POD_EPS),
    "activator-when-no-pods": Eps([ACTIVATOR], (("10.1.0.1", 8012),)),
    "activator-when-pods-not-ready": Eps([NOT_READY, ACTIVATOR], (("10.1.0.1", 8012),)),
    "activator-http2-port-for-h2c": Eps(
        [ACTIVATOR], (("10.1.0.1", 8013),), revision=synth.revision("web-1", h2c=True)
    ),
    "h2c-pods-at-their-http2-port": Eps(
        [H2C_PODS, ACTIVATOR], (("10.0.0.1", 8013),), revision=synth.revision("web-1", h2c=True)
    ),
    "pods-without-activator": Eps([PODS], POD_EPS),
    "activator-mode-always-keeps-activator": Eps(
        [PODS, ACTIVATOR], (("10.1.0.1", 8012),), mode=ActivatorMode.ALWAYS
    ),
    "burst-capacity-minus-one-keeps-activator": Eps(
        [PODS, ACTIVATOR],
        (("10.1.0.1", 8012),),
        revision=synth.revision("web-1", annotations=PINNED),
    ),
    "pinned-but-no-activator-falls-back-to-pods": Eps([PODS], POD_EPS, mode=ActivatorMode.ALWAYS),
    "nothing-can-serve": Eps([NOT_READY], ()),
}


@pytest.mark.parametrize("case", ENDPOINTS.values(), ids=ENDPOINTS.keys())
def test_endpoints_pods_or_activator(case: Eps) -> None:
    route = synth.route("web", [T("web-1", 100)])
    gateway = translated(case.revision, route, *case.objects, mode=case.mode)
    got = gateway.get(ENDPOINT, "default/web-1", endpoint_pb2.ClusterLoadAssignment)
    assert_proto_equal(got, want_endpoints("default/web-1", *case.want))


def test_scale_to_zero_and_back_never_publishes_an_empty_set() -> None:
    gateway = translated(synth.revision("web-1"), synth.route("web", [T("web-1", 100)]), ACTIVATOR)
    seen = []
    for step in (PODS, NOT_READY, PODS, NOT_READY):
        touched = gateway.apply(step)
        assert touched == {ENDPOINT: {"default/web-1"}}
        cla = gateway.get(ENDPOINT, "default/web-1", endpoint_pb2.ClusterLoadAssignment)
        seen.append(
            [e.endpoint.address.socket_address.port_value for e in cla.endpoints[0].lb_endpoints]
        )
    assert seen == [[8012, 8012], [8012], [8012, 8012], [8012]]
    assert gateway.get(ENDPOINT, "default/web-1", endpoint_pb2.ClusterLoadAssignment) == (
        want_endpoints("default/web-1", ("10.1.0.1", 8012))
    )


def test_activator_arriving_late_reaches_every_revision_at_zero() -> None:
    gateway = translated(*world(), synth.route("hello", [T("hello-1", 50), T("hello-2", 50)]))
    touched = gateway.apply(ACTIVATOR)
    assert touched == {ENDPOINT: {"default/hello-1", "default/hello-2"}}
    for name in ("default/hello-1", "default/hello-2"):
        got = gateway.get(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment)
        assert_proto_equal(got, want_endpoints(name, ("10.1.0.1", 8012)))


def test_burst_capacity_annotation_flip_moves_endpoints_not_the_cluster() -> None:
    route = synth.route("web", [T("web-1", 100)])
    gateway = translated(synth.revision("web-1"), route, PODS, ACTIVATOR)
    touched = gateway.apply(synth.revision("web-1", annotations=PINNED))
    assert CLUSTER not in touched  # same cluster bytes: nothing to push
    assert touched[ENDPOINT] == {"default/web-1"}
    got = gateway.get(ENDPOINT, "default/web-1", endpoint_pb2.ClusterLoadAssignment)
    assert_proto_equal(got, want_endpoints("default/web-1", ("10.1.0.1", 8012)))


def test_pod_changes_behind_a_pinned_activator_push_nothing() -> None:
    route = synth.route("web", [T("web-1", 100)])
    gateway = translated(synth.revision("web-1"), route, ACTIVATOR, mode=ActivatorMode.ALWAYS)
    assert gateway.apply(PODS) == {}
    assert gateway.apply(NOT_READY) == {}


def test_revision_becoming_h2c_rebuilds_its_cluster() -> None:
    gateway = translated(synth.revision("web-1"), synth.route("web", [T("web-1", 100)]))
    touched = gateway.apply(synth.revision("web-1", h2c=True))
    assert CLUSTER in touched and touched[CLUSTER] == {"default/web-1"}
    got = gateway.get(CLUSTER, "default/web-1", cluster_pb2.Cluster)
    assert_proto_equal(got, want_cluster("default/web-1", h2c=True))
