"""Translator output, compared as whole Envoy messages.

Inputs are Knative objects (synth dicts) run through the Resolver, so each row
reads as "this cluster state gives these Envoy resources". Expected messages are
spelled out here with small builders, not taken from the code under test.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from knative_xds import synth
from knative_xds.model import ActivatorMode, Resolver
from knative_xds.model.objects import BURST_CAPACITY_ANNOTATION
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from knative_xds.translate import GatewayConfig, Stats, Translator
from tests.helpers import apply_delta, assert_proto_equal, changes, deleted

T = synth.target
NS = "default"
Resources = dict[str, dict[str, Resource]]


# -- running the pipeline --------------------------------------------------------------------


@dataclass
class Gateway:
    """A Resolver and a Translator fed together, with the resources a cache would hold."""

    mode: ActivatorMode = ActivatorMode.AT_ZERO
    resolver: Resolver = field(init=False)
    translator: Translator = field(init=False)
    resources: Resources = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolver = Resolver(activator_mode=self.mode)
        self.translator = Translator(GatewayConfig())

    def apply(self, *objs: dict[str, Any], delete: bool = False) -> dict[str, set[str]]:
        """Apply objects; return the names the Delta touched, per type."""
        update = self.resolver.apply(deleted(*objs) if delete else changes(*objs))
        assert self.resolver.problems() == ()
        delta = self.translator.translate(update)
        apply_delta(self.resources, delta)
        return {t: set(named) for t, named in delta.changes.items()}

    def get(self, type_url: str, name: str, cls: type[Message]) -> Any:
        return self.resources[type_url][name].message(cls)

    def names(self, type_url: str) -> set[str]:
        return set(self.resources.get(type_url, {}))


def translated(*objs: dict[str, Any], mode: ActivatorMode = ActivatorMode.AT_ZERO) -> Gateway:
    gateway = Gateway(mode)
    gateway.apply(*objs)
    return gateway


def world() -> list[dict[str, Any]]:
    return [synth.revision("hello-1", ready=True), synth.revision("hello-2", ready=True)]


# -- expected messages -------------------------------------------------------------------------


def set_header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def weight(revision: str, percent: int, ns: str = NS) -> rc.WeightedCluster.ClusterWeight:
    return rc.WeightedCluster.ClusterWeight(
        name=f"{ns}/{revision}",
        weight=wrappers_pb2.UInt32Value(value=percent),
        request_headers_to_add=[
            set_header("Knative-Serving-Revision", revision),
            set_header("Knative-Serving-Namespace", ns),
        ],
    )


def forward(*split: tuple[str, int], idle: int = 300, ns: str = NS) -> rc.RouteAction:
    return rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(clusters=[weight(r, p, ns) for r, p in split]),
        timeout=duration_pb2.Duration(seconds=0),
        idle_timeout=duration_pb2.Duration(seconds=idle),
    )


def default_route(*split: tuple[str, int], idle: int = 300, ns: str = NS) -> rc.Route:
    return rc.Route(
        name="default", match=rc.RouteMatch(prefix="/"), route=forward(*split, idle=idle, ns=ns)
    )


def tag_route(tag: str, revision: str, idle: int = 300) -> rc.Route:
    header = rc.HeaderMatcher(
        name="Knative-Serving-Tag", string_match=string_pb2.StringMatcher(exact=tag)
    )
    return rc.Route(
        name=f"tag:{tag}",
        match=rc.RouteMatch(prefix="/", headers=[header]),
        route=forward((revision, 100), idle=idle),
    )


def svc(name: str, ns: str = NS) -> list[str]:
    return [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]


def vhost(route: str, hosts: list[str], *routes: rc.Route, ns: str = NS) -> rc.VirtualHost:
    return rc.VirtualHost(
        name=f"{ns}/{route}/{hosts[0]}",
        domains=[d for h in hosts for d in (h, f"{h}:*")],
        routes=list(routes),
    )


def table(name: str, vhosts: list[rc.VirtualHost]) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=sorted(vhosts, key=lambda v: v.name)
    )


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def packed(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


# -- route tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    objects: list[dict[str, Any]]
    external: list[rc.VirtualHost]
    internal: list[rc.VirtualHost]


HELLO_EXT = ["hello.default.example.com"]
V2_EXT = ["v2-hello.default.example.com"]
ONE = ("hello-1", 100)

TABLES = {
    "public-route-on-both-listeners": Tables(
        [synth.route("hello", [T("hello-1", 100)])],
        external=[vhost("hello", HELLO_EXT, default_route(ONE))],
        internal=[vhost("hello", svc("hello"), default_route(ONE))],
    ),
    "cluster-local-route-only-internal": Tables(
        [synth.route("hello", [T("hello-1", 100)], cluster_local=True)],
        external=[],
        internal=[vhost("hello", svc("hello"), default_route(ONE))],
    ),
    "split-90-10-with-tag-host": Tables(
        [synth.route("hello", [T("hello-1", 90), T("hello-2", 10, tag="v2")])],
        external=[
            vhost("hello", HELLO_EXT, default_route(("hello-1", 90), ("hello-2", 10))),
            vhost("hello", V2_EXT, default_route(("hello-2", 100))),
        ],
        internal=[
            vhost("hello", svc("hello"), default_route(("hello-1", 90), ("hello-2", 10))),
            vhost("hello", svc("v2-hello"), default_route(("hello-2", 100))),
        ],
    ),
    "zero-percent-target-absent-from-split": Tables(
        [synth.route("hello", [T("hello-1", 100), T("hello-2", 0)])],
        external=[vhost("hello", HELLO_EXT, default_route(ONE))],
        internal=[vhost("hello", svc("hello"), default_route(ONE))],
    ),
    "idle-timeout-follows-the-longest-revision-timeout": Tables(
        [
            synth.revision("slow-1", timeout=900),
            synth.revision("fast-1", timeout=30),
            synth.route("hello", [T("slow-1", 50), T("fast-1", 50, tag="fast")]),
        ],
        external=[
            vhost("hello", HELLO_EXT, default_route(("fast-1", 50), ("slow-1", 50), idle=900)),
            vhost(
                "hello", ["fast-hello.default.example.com"], default_route(("fast-1", 100), idle=30)
            ),
        ],
        internal=[
            vhost("hello", svc("hello"), default_route(("fast-1", 50), ("slow-1", 50), idle=900)),
            vhost("hello", svc("fast-hello"), default_route(("fast-1", 100), idle=30)),
        ],
    ),
    "tag-header-routes-before-the-default": Tables(
        [
            synth.config_map("config-network", {"tag-header-based-routing": "enabled"}),
            synth.route("hello", [T("hello-1", 100, tag="v1"), T("hello-2", 0, tag="v2")]),
        ],
        external=[
            vhost(
                "hello",
                HELLO_EXT,
                tag_route("v1", "hello-1"),
                tag_route("v2", "hello-2"),
                default_route(ONE),
            ),
            vhost("hello", ["v1-hello.default.example.com"], default_route(ONE)),
            vhost("hello", V2_EXT, default_route(("hello-2", 100))),
        ],
        internal=[
            vhost(
                "hello",
                svc("hello"),
                tag_route("v1", "hello-1"),
                tag_route("v2", "hello-2"),
                default_route(ONE),
            ),
            vhost("hello", svc("v1-hello"), default_route(ONE)),
            vhost("hello", svc("v2-hello"), default_route(("hello-2", 100))),
        ],
    ),
    "domain-and-tag-templates": Tables(
        [
            synth.config_map("config-domain", {"knative.dev": ""}),
            synth.config_map(
                "config-network",
                {
                    "domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}",
                    "tag-template": "{{.Name}}-{{.Tag}}",
                },
            ),
            synth.route("hello", [T("hello-1", 100, tag="v1")]),
        ],
        external=[
            vhost("hello", ["hello-default.knative.dev"], default_route(ONE)),
            vhost("hello", ["hello-v1-default.knative.dev"], default_route(ONE)),
        ],
        internal=[
            vhost("hello", svc("hello"), default_route(ONE)),
            vhost("hello", svc("hello-v1"), default_route(ONE)),
        ],
    ),
    "namespace-in-names-and-headers": Tables(
        [
            synth.revision("hello-1", namespace="team"),
            synth.route("hello", [T("hello-1", 100)], namespace="team"),
        ],
        external=[
            vhost("hello", ["hello.team.example.com"], default_route(ONE, ns="team"), ns="team"),
        ],
        internal=[
            vhost("hello", svc("hello", "team"), default_route(ONE, ns="team"), ns="team"),
        ],
    ),
    "virtual-hosts-sorted-by-name": Tables(
        [
            synth.route("zeta", [T("hello-1", 100)]),
            synth.route("alpha", [T("hello-2", 100)], cluster_local=True),
        ],
        external=[vhost("zeta", ["zeta.default.example.com"], default_route(ONE))],
        internal=[
            vhost("alpha", svc("alpha"), default_route(("hello-2", 100))),
            vhost("zeta", svc("zeta"), default_route(ONE)),
        ],
    ),
}


@pytest.mark.parametrize("case", TABLES.values(), ids=TABLES.keys())
def test_route_tables(case: Tables) -> None:
    gateway = translated(*world(), *case.objects)
    assert gateway.names(ROUTE) == {"external", "internal"}
    for name, vhosts in (("external", case.external), ("internal", case.internal)):
        got = gateway.get(ROUTE, name, route_pb2.RouteConfiguration)
        assert_proto_equal(got, table(name, vhosts))


def test_route_action_has_timeout_zero_and_no_retries() -> None:
    gateway = translated(*world(), synth.route("hello", [T("hello-1", 100)]))
    [vh] = gateway.get(ROUTE, "external", route_pb2.RouteConfiguration).virtual_hosts
    action = vh.routes[0].route
    # Present and zero: an unset timeout is Envoy's 15 s default.
    assert action.HasField("timeout") and action.timeout.ToSeconds() == 0
    assert not action.HasField("retry_policy")
    assert not vh.HasField("retry_policy")


def test_empty_state_still_publishes_listeners_and_empty_route_tables() -> None:
    gateway = translated()
    assert gateway.names(LISTENER) == {"external", "internal"}
    for name in ("external", "internal"):
        assert_proto_equal(gateway.get(ROUTE, name, route_pb2.RouteConfiguration), table(name, []))
    assert gateway.names(CLUSTER) == gateway.names(ENDPOINT) == set()


# -- listeners ---------------------------------------------------------------------------------


def want_listener(name: str, port: int) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(config_source=ads(), route_config_name=name),
        http_filters=[
            hcm.HttpFilter(
                name="envoy.filters.http.router", typed_config=packed(router_pb2.Router())
            )
        ],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=packed(manager),
                    )
                ]
            )
        ],
    )


@pytest.mark.parametrize(("name", "port"), [("external", 8080), ("internal", 8081)])
def test_listener_with_rds_and_websocket_upgrade(name: str, port: int) -> None:
    gateway = translated()
    assert_proto_equal(
        gateway.get(LISTENER, name, listener_pb2.Listener), want_listener(name, port)
    )
    assert gateway.resources[LISTENER][name].refs == {name}


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


def test_deleting_a_route_removes_its_virtual_hosts_clusters_and_endpoints() -> None:
    shared = synth.route("a", [T("hello-1", 100)])
    doomed = synth.route("b", [T("hello-1", 50), T("hello-2", 50)])
    gateway = translated(*world(), shared, doomed, ACTIVATOR)
    touched = gateway.apply(doomed, delete=True)
    assert touched == {
        ROUTE: {"external", "internal"},
        CLUSTER: {"default/hello-2"},
        ENDPOINT: {"default/hello-2"},
    }
    assert gateway.names(CLUSTER) == gateway.names(ENDPOINT) == {"default/hello-1"}
    external = gateway.get(ROUTE, "external", route_pb2.RouteConfiguration)
    assert [v.name for v in external.virtual_hosts] == ["default/a/a.default.example.com"]


def test_revision_becoming_h2c_rebuilds_its_cluster() -> None:
    gateway = translated(synth.revision("web-1"), synth.route("web", [T("web-1", 100)]))
    touched = gateway.apply(synth.revision("web-1", h2c=True))
    assert CLUSTER in touched and touched[CLUSTER] == {"default/web-1"}
    got = gateway.get(CLUSTER, "default/web-1", cluster_pb2.Cluster)
    assert_proto_equal(got, want_cluster("default/web-1", h2c=True))


# -- determinism and the O(change) guard ---------------------------------------------------------


def busy_world() -> list[dict[str, Any]]:
    return [
        *world(),
        synth.revision("grpc-1", h2c=True, timeout=60),
        synth.revision("web-1", namespace="team"),
        synth.config_map("config-network", {"tag-header-based-routing": "enabled"}),
        synth.route("hello", [T("hello-1", 90), T("hello-2", 10, tag="v2")]),
        synth.route("grpc", [T("grpc-1", 100, tag="stable")], cluster_local=True),
        synth.route("web", [T("web-1", 100)], namespace="team"),
        synth.endpoint_slice("hello-1", ["10.0.0.3", "10.0.0.1"], 8012),
        synth.endpoint_slice("hello-1", ["10.0.0.2"], 8012, suffix="other"),
        ACTIVATOR,
    ]


def as_bytes(resources: Resources) -> dict[str, dict[str, bytes]]:
    return {t: {n: r.body for n, r in named.items()} for t, named in resources.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_output_is_deterministic_whatever_the_input_order(seed: int) -> None:
    objs = busy_world()
    shuffled = list(objs)
    random.Random(seed).shuffle(shuffled)
    one, other = translated(*objs), translated(*reversed(shuffled))
    assert as_bytes(one.resources) == as_bytes(other.resources)
    versions = {t: {n: r.version for n, r in named.items()} for t, named in one.resources.items()}
    assert versions == {
        t: {n: r.version for n, r in named.items()} for t, named in other.resources.items()
    }


def test_one_batch_or_one_object_at_a_time_give_the_same_bytes() -> None:
    whole = translated(*busy_world())
    step = Gateway()
    for obj in busy_world():
        step.apply(obj)
    assert as_bytes(step.resources) == as_bytes(whole.resources)


def test_joined_route_table_decodes_to_the_same_bytes_as_one_message() -> None:
    gateway = translated(*busy_world())
    for name, resource in gateway.resources[ROUTE].items():
        message = resource.message(route_pb2.RouteConfiguration)
        assert message.SerializeToString(deterministic=True) == resource.body, name


def many_routes(n: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [ACTIVATOR]
    for i in range(n):
        objs += [
            synth.revision(f"r{i}-a"),
            synth.revision(f"r{i}-b"),
            synth.route(f"r{i}", [T(f"r{i}-a", 50), T(f"r{i}-b", 50, tag="b")]),
            synth.endpoint_slice(f"r{i}-a", [f"10.{i // 250}.{i % 250}.1"], 8012),
        ]
    return objs


def work_done(gateway: Gateway, *objs: dict[str, Any]) -> tuple[Stats, dict[str, set[str]]]:
    before = dataclasses.replace(gateway.translator.stats)
    touched = gateway.apply(*objs)
    after = gateway.translator.stats
    names = [f.name for f in dataclasses.fields(Stats)]
    return Stats(**{n: getattr(after, n) - getattr(before, n) for n in names}), touched


@pytest.fixture(scope="module")
def two_hundred() -> Gateway:
    return translated(*many_routes(200))


def test_one_route_edit_among_200_rebuilds_one_route(two_hundred: Gateway) -> None:
    edit = synth.route("r7", [T("r7-a", 70), T("r7-b", 30, tag="b")])
    stats, touched = work_done(two_hundred, edit)
    assert stats == Stats(
        routes_translated=1, clusters_built=0, endpoints_built=0, route_tables_built=2
    )
    assert touched == {ROUTE: {"external", "internal"}}
    [vh] = [
        v
        for v in two_hundred.get(ROUTE, "external", route_pb2.RouteConfiguration).virtual_hosts
        if v.name == "default/r7/r7.default.example.com"
    ]
    assert_proto_equal(
        vh,
        vhost("r7", ["r7.default.example.com"], default_route(("r7-a", 70), ("r7-b", 30))),
    )


def test_one_pod_change_among_200_rebuilds_one_endpoint_set(two_hundred: Gateway) -> None:
    stats, touched = work_done(two_hundred, synth.endpoint_slice("r9-b", ["10.9.9.9"], 8012))
    assert stats == Stats(endpoints_built=1)
    assert touched == {ENDPOINT: {"default/r9-b"}}
