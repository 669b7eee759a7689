"""KIngress → Envoy resources, compared as whole messages.

A KIngress gets, like a Route, its own RouteConfiguration per listener it has
hosts on (`<listener>/<namespace>/<name>`) and the scopes naming them; with TLS
also an `external-tls` table, a filter chain on the HTTPS listener chosen by
SNI and an SDS secret per Kubernetes Secret. Every path is two routes: Knative's
probe copy (matching `K-Network-Hash: override`), then the path itself.
Expected messages are spelled out here, not taken from the code under test.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as epc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from knative_xds import synth
from knative_xds.cache import SnapshotCache
from knative_xds.model import ObjectKey, Resolver
from knative_xds.model.probe import compute_hash
from knative_xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SCOPED_ROUTE,
    SECRET,
    Resource,
)
from knative_xds.translate import GatewayConfig, Stats, Translator
from knative_xds.translate.edge import EDGE, buffer_limit, connection_limit, harden
from tests.helpers import Gateway, ads, assert_proto_equal, changes, deleted, packed
from tests.kingress_fixtures import (
    CERT_PEM,
    KEY_PEM,
    Obj,
    a_kingress,
    a_local_rule,
    a_path,
    a_port,
    a_rule,
    a_secret,
    a_service,
    a_service_slice,
    a_split,
    a_tls,
    rotated,
)

HASH = "K-Network-Hash"
HOST = "hello.default.example.com"
LOCAL_HOSTS = ["hello.default.svc.cluster.local", "hello.default.svc", "hello.default"]
EXT, INT, TLS = "external/default/hello", "internal/default/hello", "external-tls/default/hello"
HELLO = "default/hello:80"


def translated(*objs: Obj) -> Gateway:
    gateway = Gateway()
    gateway.apply(*objs)
    return gateway


def hash_of(kingress: Obj) -> str:
    meta = kingress["metadata"]
    return compute_hash(kingress["spec"], meta["namespace"], meta["name"])


# -- expected messages -------------------------------------------------------------------------


def set_header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def weight(cluster: str, percent: int, **headers: str) -> rc.WeightedCluster.ClusterWeight:
    return rc.WeightedCluster.ClusterWeight(
        name=cluster,
        weight=wrappers_pb2.UInt32Value(value=percent),
        request_headers_to_add=[set_header(n, v) for n, v in sorted(headers.items())],
    )


def forward(*weights: rc.WeightedCluster.ClusterWeight, host: str = "") -> rc.RouteAction:
    action = rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(clusters=list(weights)),
        timeout=duration_pb2.Duration(seconds=0),  # Envoy's default 15 s would cut requests
    )
    if host:
        action.host_rewrite_literal = host
    return action


def exact(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def route(
    name: str,
    action: rc.RouteAction | None,
    *,
    prefix: str = "/",
    match: tuple[rc.HeaderMatcher, ...] = (),
    headers: tuple[base_pb2.HeaderValueOption, ...] = (),
) -> rc.Route:
    """A route forwarding with `action`, or (None) Knative's `Redirected`: a 301 to https."""
    out = rc.Route(name=name, match=rc.RouteMatch(prefix=prefix, headers=list(match)))
    if action is None:
        out.redirect.CopyFrom(
            rc.RedirectAction(
                https_redirect=True, response_code=rc.RedirectAction.MOVED_PERMANENTLY
            )
        )
    else:
        out.route.CopyFrom(action)
        out.request_headers_to_add.extend(headers)
    return out


def plain(action: rc.RouteAction | None, kingress: Obj) -> list[rc.Route]:
    """The two routes of a path with no prefix, matches or headers: its probe, then it."""
    probe = route(
        f"{HASH}=override",
        action,
        match=(exact(HASH, "override"),),
        headers=(set_header(HASH, hash_of(kingress)),),
    )
    return [probe, route("default", action)]


def vhost(hosts: list[str], routes: list[rc.Route], ingress: str = "hello") -> rc.VirtualHost:
    return rc.VirtualHost(
        name=f"default/{ingress}/{hosts[0]}",
        domains=[d for h in hosts for d in (h, f"{h}:*")],
        routes=routes,
    )


def table(name: str, *vhosts: rc.VirtualHost) -> route_pb2.RouteConfiguration:
    # Split headers are set after path headers: with this flag the split's win.
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=list(vhosts), most_specific_header_mutations_wins=True
    )


def scope(listener: str, fragments: list[str], route_table: str) -> Message:
    msg = scoped_route_pb2.ScopedRouteConfiguration
    key = ".".join(fragments[:2] if listener == "internal" else fragments[:1])
    return msg(
        name=f"{listener}/{key}",
        route_configuration_name=route_table,
        key=msg.Key(fragments=[msg.Key.Fragment(string_key=f) for f in fragments]),
    )


def assert_tables(gateway: Gateway, *want: route_pb2.RouteConfiguration) -> None:
    assert gateway.names(ROUTE) == {t.name for t in want}
    for t in want:
        assert_proto_equal(gateway.get(ROUTE, t.name, route_pb2.RouteConfiguration), t)


def assert_scopes(gateway: Gateway, *want: Message) -> None:
    msg = scoped_route_pb2.ScopedRouteConfiguration
    assert gateway.names(SCOPED_ROUTE) == {s.name for s in want}
    for s in want:
        assert_proto_equal(gateway.get(SCOPED_ROUTE, s.name, msg), s)
        assert gateway.resources[SCOPED_ROUTE][s.name].refs == (s.route_configuration_name,)


# -- route tables ------------------------------------------------------------------------------


def test_a_path_with_prefix_header_match_pre_split_headers_and_host_rewrite() -> None:
    kingress = a_kingress(
        "hello",
        a_rule(
            HOST,
            paths=[
                a_path(
                    a_split(),
                    path="/api",
                    match={"X-Canary": "yes"},
                    headers={"X-Pre": "set"},
                    rewrite_host="hello.internal.example.com",
                )
            ],
        ),
    )
    gateway = translated(a_service(), kingress)
    action = forward(weight(HELLO, 100), host="hello.internal.example.com")
    routes = [
        route(
            f"/api {HASH}=override X-Canary=yes",
            action,
            prefix="/api",
            match=(exact(HASH, "override"), exact("X-Canary", "yes")),
            headers=(set_header(HASH, hash_of(kingress)), set_header("X-Pre", "set")),
        ),
        route(
            "/api X-Canary=yes",
            action,
            prefix="/api",
            match=(exact("X-Canary", "yes"),),
            headers=(set_header("X-Pre", "set"),),
        ),
    ]
    # An ExternalIP host answers on both listeners.
    assert_tables(gateway, table(EXT, vhost([HOST], routes)), table(INT, vhost([HOST], routes)))
    assert gateway.resources[ROUTE][EXT].refs == (HELLO,)


def test_split_headers_are_set_per_weighted_cluster() -> None:
    splits = [
        a_split("hello", percent=70, headers={"Knative-Serving-Revision": "hello-1"}),
        a_split("canary", percent=30, headers={"Knative-Serving-Revision": "canary-1", "B": "2"}),
    ]
    kingress = a_kingress("hello", a_rule(HOST, paths=[a_path(*splits)]))
    gateway = translated(a_service(), a_service("canary"), kingress)
    action = forward(
        weight(HELLO, 70, **{"Knative-Serving-Revision": "hello-1"}),
        weight("default/canary:80", 30, **{"Knative-Serving-Revision": "canary-1", "B": "2"}),
    )
    routes = plain(action, kingress)
    assert_tables(gateway, table(EXT, vhost([HOST], routes)), table(INT, vhost([HOST], routes)))
    assert gateway.resources[ROUTE][EXT].refs == ("default/canary:80", HELLO)


def test_paths_keep_their_order_after_all_probes() -> None:
    kingress = a_kingress(
        "hello", a_rule(HOST, paths=[a_path(path="/b"), a_path(path="/a"), a_path()])
    )
    gateway = translated(a_service(), kingress)
    [vh] = gateway.get(ROUTE, EXT, route_pb2.RouteConfiguration).virtual_hosts
    assert [r.name for r in vh.routes] == [
        f"/b {HASH}=override",
        f"/a {HASH}=override",
        f"{HASH}=override",
        "/b",
        "/a",
        "default",
    ]


def test_internal_table_holds_both_visibilities_the_external_one_external_ip_only() -> None:
    kingress = a_kingress("hello", a_rule("hello.example.com"), a_local_rule())
    gateway = translated(a_service(), kingress)
    routes = plain(forward(weight(HELLO, 100)), kingress)
    public = vhost(["hello.example.com"], routes)
    assert_tables(gateway, table(EXT, public), table(INT, public, vhost(LOCAL_HOSTS, routes)))
    assert_scopes(
        gateway,
        scope("external", ["hello.example.com"], EXT),
        # The ExternalIP host's first two labels, and the cluster-local rule's.
        scope("internal", ["hello", "example"], INT),
        scope("internal", ["hello", "default"], INT),
    )


def test_a_cluster_local_only_kingress_has_no_external_table() -> None:
    kingress = a_kingress("hello", a_local_rule())
    gateway = translated(a_service(), kingress)
    routes = plain(forward(weight(HELLO, 100)), kingress)
    assert_tables(gateway, table(INT, vhost(LOCAL_HOSTS, routes)))
    assert_scopes(gateway, scope("internal", ["hello", "default"], INT))


def test_a_shadowed_external_host_has_no_internal_virtual_host_or_scope() -> None:
    local = a_kingress("local", a_rule("a.b.svc.cluster.local", visibility="ClusterLocal"))
    public = a_kingress("public", a_rule("a.b.example.com"), a_rule("c.d.example.com"))
    gateway = translated(a_service(), local, public)
    routes = plain(forward(weight(HELLO, 100)), public)
    assert_proto_equal(
        gateway.get(ROUTE, "internal/default/public", route_pb2.RouteConfiguration),
        table("internal/default/public", vhost(["c.d.example.com"], routes, "public")),
    )
    internal = {n for n in gateway.names(SCOPED_ROUTE) if n.startswith("internal/")}
    assert internal == {"internal/a.b", "internal/c.d"}
    got = gateway.get(SCOPED_ROUTE, "internal/a.b", scoped_route_pb2.ScopedRouteConfiguration)
    assert got.route_configuration_name == "internal/default/local"

    gateway.apply(local, delete=True)  # un-shadowed: the scope passes to `public`
    got = gateway.get(SCOPED_ROUTE, "internal/a.b", scoped_route_pb2.ScopedRouteConfiguration)
    assert_proto_equal(got, scope("internal", ["a", "b"], "internal/default/public"))


# -- TLS and httpOption ------------------------------------------------------------------------

TLS_KINGRESS = a_kingress("hello", a_rule(HOST), a_local_rule(), tls=[a_tls(HOST)])


def test_redirected_answers_external_with_301_to_https_and_internal_serves() -> None:
    kingress = a_kingress("hello", a_rule(HOST), a_local_rule(), http_option="Redirected")
    gateway = translated(a_service(), kingress)
    serving = plain(forward(weight(HELLO, 100)), kingress)
    assert_tables(
        gateway,
        table(EXT, vhost([HOST], plain(None, kingress))),
        table(INT, vhost([HOST], serving), vhost(LOCAL_HOSTS, serving)),
    )
    assert gateway.resources[ROUTE][EXT].refs == ()  # a redirecting table sends to no cluster
    assert gateway.resources[ROUTE][INT].refs == (HELLO,)


def test_redirected_answers_external_with_301_to_https_and_serves_over_tls() -> None:
    kingress = a_kingress(
        "hello", a_rule(HOST), a_local_rule(), tls=[a_tls(HOST)], http_option="Redirected"
    )
    gateway = translated(a_service(), a_secret(), kingress)
    serving = plain(forward(weight(HELLO, 100)), kingress)
    assert_tables(
        gateway,
        table(EXT, vhost([HOST], plain(None, kingress))),
        table(TLS, vhost([HOST], serving)),
        table(INT, vhost([HOST], serving), vhost(LOCAL_HOSTS, serving)),
    )
    # A redirecting table sends to no cluster.
    assert gateway.resources[ROUTE][EXT].refs == ()
    assert gateway.resources[ROUTE][TLS].refs == (HELLO,)
    assert_scopes(
        gateway,
        scope("external", [HOST], EXT),
        # The HTTPS listener's keys: the host three times, so no plain-HTTP key matches them.
        scope("external-tls", [HOST, HOST, HOST], TLS),
        scope("internal", ["hello", "default"], INT),
    )


def test_enabled_with_tls_serves_both_plain_http_and_https() -> None:
    gateway = translated(a_service(), a_secret(), TLS_KINGRESS)
    serving = plain(forward(weight(HELLO, 100)), TLS_KINGRESS)
    for name in (EXT, TLS):
        got = gateway.get(ROUTE, name, route_pb2.RouteConfiguration)
        assert_proto_equal(got, table(name, vhost([HOST], serving)))


def manager(listener: str, fragments: int) -> hcm.HttpConnectionManager:
    builder = hcm.ScopedRoutes.ScopeKeyBuilder
    host = builder.FragmentBuilder(
        header_value_extractor=builder.FragmentBuilder.HeaderValueExtractor(
            name=":authority", index=0
        )
    )
    out = hcm.HttpConnectionManager(
        stat_prefix=listener,
        codec_type=hcm.HttpConnectionManager.AUTO,
        strip_any_host_port=True,
        scoped_routes=hcm.ScopedRoutes(
            name=listener,
            scope_key_builder=builder(fragments=[host] * fragments),
            rds_config_source=ads(),
            scoped_rds=hcm.ScopedRds(scoped_rds_config_source=ads()),
        ),
        http_filters=[
            hcm.HttpFilter(
                name="envoy.filters.http.router", typed_config=packed(router_pb2.Router())
            )
        ],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    harden(out, EDGE, trusted_hops=0)
    return out


def sni_chain(secret: str, *server_names: str) -> lc.FilterChain:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=secret, sds_config=ads())
            ],
        )
    )
    return lc.FilterChain(
        name=secret,
        filter_chain_match=lc.FilterChainMatch(server_names=list(server_names)),
        transport_socket=base_pb2.TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=packed(context)
        ),
        filters=[
            lc.Filter(
                name="envoy.filters.network.connection_limit",
                typed_config=packed(connection_limit("external-tls", EDGE)),
            ),
            lc.Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=packed(manager("external-tls", 3)),
            ),
        ],
    )


def tls_listener(*chains: lc.FilterChain) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name="external-tls",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=8443)
        ),
        per_connection_buffer_limit_bytes=buffer_limit(),
        listener_filters=[
            lc.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=packed(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=list(chains),
    )


def sds_secret(name: str, chain: bytes = CERT_PEM) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain),
            private_key=base_pb2.DataSource(inline_bytes=KEY_PEM),
        ),
    )


def test_tls_listener_has_an_sni_filter_chain_per_certificate_over_sds() -> None:
    team = a_kingress(
        "shop",
        a_rule("shop.team.example.com", paths=[a_path(a_split("shop", ns="team"))]),
        ns="team",
        tls=[a_tls("www.shop.example.com", "shop.team.example.com", secret="shop", ns="team")],
    )
    gateway = translated(
        a_service(),
        a_service("shop", ns="team"),
        a_secret(),
        a_secret("shop", ns="team"),
        TLS_KINGRESS,
        team,
    )
    got = gateway.get(LISTENER, "external-tls", listener_pb2.Listener)
    assert_proto_equal(
        got,
        tls_listener(
            sni_chain("default/hello-tls", HOST),
            sni_chain("team/shop", "shop.team.example.com", "www.shop.example.com"),
        ),
    )
    # The listener names its certificates: they are pushed before it.
    assert gateway.resources[LISTENER]["external-tls"].refs == ("default/hello-tls", "team/shop")
    assert gateway.names(SECRET) == {"default/hello-tls", "team/shop"}
    for name in gateway.names(SECRET):
        assert_proto_equal(gateway.get(SECRET, name, secret_pb2.Secret), sds_secret(name))


def test_no_tls_kingress_means_no_https_listener() -> None:
    gateway = translated(a_service(), a_secret(), a_kingress())
    assert gateway.names(LISTENER) == {"external", "internal"}
    assert SECRET not in gateway.resources
    gateway.apply(TLS_KINGRESS)
    assert gateway.names(LISTENER) == {"external", "internal", "external-tls"}
    gateway.apply(a_kingress())  # TLS dropped again: the listener and secret go
    assert gateway.removed[LISTENER] == {"external-tls"}
    assert gateway.removed[SECRET] == {"default/hello-tls"}


def test_a_certificate_rotation_resends_only_its_secret() -> None:
    gateway = translated(a_service(), a_secret(), TLS_KINGRESS)
    touched = gateway.apply(a_secret(cert=rotated("second")))
    assert touched == {SECRET: {"default/hello-tls"}}
    got = gateway.get(SECRET, "default/hello-tls", secret_pb2.Secret)
    assert_proto_equal(got, sds_secret("default/hello-tls", rotated("second")))


def test_owned_names_an_ingresss_tables_and_scopes() -> None:
    gateway = translated(a_service(), a_kingress("hello", a_rule(HOST), a_local_rule()))
    owned = gateway.translator.owned(ObjectKey("default", "hello"))
    assert set(owned) == {
        (ROUTE, EXT),
        (ROUTE, INT),
        (SCOPED_ROUTE, f"external/{HOST}"),
        (SCOPED_ROUTE, "internal/hello.default"),
    }
    # Exactly what was published: a gateway holding these serves this version.
    assert all(owned[i] is gateway.resources[i[0]][i[1]] for i in owned)
    assert gateway.translator.owned(ObjectKey("default", "nope")) == {}


def test_owned_names_the_https_listener_and_secret_of_a_tls_ingress_only() -> None:
    gateway = translated(
        a_service(), a_secret(), TLS_KINGRESS, a_kingress("plain", a_rule("p.example.com"))
    )
    owned = gateway.translator.owned(ObjectKey("default", "hello"))
    assert set(owned) == {
        (ROUTE, EXT),
        (ROUTE, INT),
        (ROUTE, TLS),
        (SCOPED_ROUTE, f"external/{HOST}"),
        (SCOPED_ROUTE, f"external-tls/{HOST}"),
        (SCOPED_ROUTE, "internal/hello.default"),
        (LISTENER, "external-tls"),
        (SECRET, "default/hello-tls"),
    }
    assert all(owned[i] is gateway.resources[i[0]][i[1]] for i in owned)
    assert set(gateway.translator.owned(ObjectKey("default", "plain"))) == {
        (ROUTE, "external/default/plain"),
        (ROUTE, "internal/default/plain"),
        (SCOPED_ROUTE, "external/p.example.com"),
        (SCOPED_ROUTE, "internal/p.example"),
    }


# -- clusters ----------------------------------------------------------------------------------


def base_cluster(name: str) -> cluster_pb2.Cluster:
    limit = wrappers_pb2.UInt32Value(value=1 << 20)
    return cluster_pb2.Cluster(
        name=name,
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


def assignment(name: str, *endpoints: tuple[str, int]) -> endpoint_pb2.ClusterLoadAssignment:
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
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[epc.LocalityLbEndpoints(lb_endpoints=lb)] if lb else []
    )


def test_an_external_name_service_is_a_logical_dns_cluster_without_eds() -> None:
    mapped = a_service(
        "mapped", a_port(80, "http"), external_name="gw.knative-xds.svc.cluster.local"
    )
    kingress = a_kingress("hello", a_rule(HOST, paths=[a_path(a_split("mapped"))]))
    gateway = translated(mapped, kingress)
    want = base_cluster("default/mapped:80")
    want.type = cluster_pb2.Cluster.LOGICAL_DNS
    want.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    want.load_assignment.CopyFrom(
        assignment("default/mapped:80", ("gw.knative-xds.svc.cluster.local", 80))
    )
    assert_proto_equal(gateway.get(CLUSTER, "default/mapped:80", cluster_pb2.Cluster), want)
    assert gateway.resources[CLUSTER]["default/mapped:80"].refs == ()
    assert ENDPOINT not in gateway.resources


def test_a_service_cluster_is_eds_and_names_its_endpoints() -> None:
    kingress = a_kingress("hello", a_rule(HOST))
    gateway = translated(a_service(), a_service_slice("hello", ["10.2.0.2", "10.2.0.1"]), kingress)
    want = base_cluster(HELLO)
    want.type = cluster_pb2.Cluster.EDS
    want.eds_cluster_config.eds_config.CopyFrom(ads())
    assert_proto_equal(gateway.get(CLUSTER, HELLO, cluster_pb2.Cluster), want)
    # The cache never publishes an EDS cluster without the endpoints it names.
    assert gateway.resources[CLUSTER][HELLO].refs == (HELLO,)
    got = gateway.get(ENDPOINT, HELLO, endpoint_pb2.ClusterLoadAssignment)
    assert_proto_equal(got, assignment(HELLO, ("10.2.0.1", 8080), ("10.2.0.2", 8080)))


def test_a_revision_services_endpoints_go_from_activator_to_pods() -> None:
    revision = a_service("hello-00001", a_port(80, "http"), revision="hello-00001")
    kingress = a_kingress("hello", a_rule(HOST, paths=[a_path(a_split("hello-00001"))]))
    name = "default/hello-00001:80"
    gateway = translated(synth.activator_slice("10.1.0.1", 8012, 8013), revision, kingress)
    got = gateway.get(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment)
    assert_proto_equal(got, assignment(name, ("10.1.0.1", 8012)))
    touched = gateway.apply(synth.endpoint_slice("hello-00001", ["10.0.0.5"], 8012))
    assert touched == {ENDPOINT: {name}}
    got = gateway.get(ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment)
    assert_proto_equal(got, assignment(name, ("10.0.0.5", 8012)))


# -- the cache's consistency -------------------------------------------------------------------


def lifetime(tls: bool) -> list[dict]:
    """A KIngress over a Service and an ExternalName Service, edited, then deleted."""
    mapped = a_service("mapped", a_port(80, "http"), external_name="gw.example.com")
    extra = {"tls": [a_tls(HOST)]} if tls else {}
    kingress = a_kingress(
        "hello",
        a_rule(HOST, paths=[a_path(a_split(percent=50), a_split("mapped", percent=50))]),
        a_local_rule(),
        **extra,
    )
    edit = a_kingress("hello", a_rule(HOST, paths=[a_path(a_split("mapped"))]), **extra)
    steps = [
        changes(a_service(), mapped, a_secret(), kingress),
        changes(a_service_slice("hello")),
        changes(edit),
        changes(a_kingress("hello", a_rule(HOST), **extra)),
        deleted(kingress),
    ]
    if tls:
        steps.insert(2, changes(a_secret(cert=rotated("two"))))
    return steps


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_every_step_of_a_kingress_lifetime_is_a_consistent_snapshot(tls: bool) -> None:
    """The cache refuses a snapshot with a dangling reference: each delta must be whole."""
    resolver, translator, cache = Resolver(), Translator(GatewayConfig()), SnapshotCache()
    for step in lifetime(tls):
        update = resolver.apply(step)
        assert resolver.problems() == ()
        cache.apply(translator.translate(update))  # raises InconsistentSnapshot
        snapshot = cache.current()
        assert snapshot is not None
        clusters = snapshot.of(CLUSTER)
        # An EDS cluster names its endpoint set; the DNS one resolves its name itself.
        assert {n: r.refs for n, r in clusters.items()} == {
            n: () if n == "default/mapped:80" else (n,) for n in clusters
        }
    gone = (ROUTE, SCOPED_ROUTE, CLUSTER, ENDPOINT, SECRET)
    assert {t: set(snapshot.of(t)) for t in gone} == {t: set() for t in gone}
    assert set(snapshot.of(LISTENER)) == {"external", "internal"}


# -- the O(change) guard: work counted, not timed ----------------------------------------------


def many_kingresses(n: int, *, tls: bool = False) -> list[Obj]:
    """`n` KIngresses as Knative writes them for a Route; with `tls`, every other one has TLS."""
    objs: list[Obj] = []
    for i in range(n):
        name = f"k{i}"
        host = f"{name}.default.example.com"
        with_tls = tls and i % 2 == 1
        objs += [
            a_service(name),
            a_service_slice(name, [f"10.{i // 250}.{i % 250}.1"]),
            a_kingress(
                name,
                a_rule(host, paths=[a_path(a_split(name))]),
                a_local_rule(name, paths=[a_path(a_split(name))]),
                tls=[a_tls(host, secret=f"{name}-tls")] if with_tls else [],
            ),
        ]
        if with_tls:
            objs.append(a_secret(f"{name}-tls"))
    return objs


def edited(name: str, *, tls: bool = False) -> Obj:
    """KIngress `name` of `many_kingresses` with its public path moved to `/v2`."""
    host = f"{name}.default.example.com"
    return a_kingress(
        name,
        a_rule(host, paths=[a_path(a_split(name), path="/v2")]),
        a_local_rule(name, paths=[a_path(a_split(name))]),
        tls=[a_tls(host, secret=f"{name}-tls")] if tls else [],
    )


@dataclasses.dataclass
class Work:
    stats: Stats
    touched: dict[str, set[str]]
    serialized: Counter[str]  # Resource.of calls per message type: serialized and hashed


def work_done(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, *objs: Obj) -> Work:
    calls = Counter[str]()
    real_of = Resource.of.__func__  # type: ignore[attr-defined]

    def counting_of(cls: type[Resource], message: Message, **kwargs: Any) -> Resource:
        calls[type(message).__name__] += 1
        return real_of(cls, message, **kwargs)

    before = dataclasses.replace(gateway.translator.stats)
    with monkeypatch.context() as m:
        m.setattr(Resource, "of", classmethod(counting_of))
        touched = gateway.apply(*objs)
    after = gateway.translator.stats
    names = [f.name for f in dataclasses.fields(Stats)]
    stats = Stats(**{n: getattr(after, n) - getattr(before, n) for n in names})
    return Work(stats, touched, calls)


@pytest.fixture(scope="module")
def loaded() -> Gateway:
    return translated(*many_kingresses(200))


def test_editing_one_kingress_of_200_reserializes_only_its_own_tables(
    loaded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = work_done(loaded, monkeypatch, edited("k7"))
    # The spec's probe hash is in every route of its tables; its scopes stay as they were.
    assert work.touched == {ROUTE: {"external/default/k7", "internal/default/k7"}}
    assert work.stats == Stats(ingresses_translated=1, route_tables_built=2)
    assert work.serialized == {"RouteConfiguration": 2}
    table_k7 = loaded.get(ROUTE, "external/default/k7", route_pb2.RouteConfiguration)
    assert [r.match.prefix for r in table_k7.virtual_hosts[0].routes] == ["/v2", "/v2"]


def test_a_pod_change_behind_one_kingress_of_200_rebuilds_one_endpoint_set(
    loaded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = work_done(loaded, monkeypatch, a_service_slice("k9", ["10.9.9.9"]))
    assert work.touched == {ENDPOINT: {"default/k9:80"}}
    assert work.stats == Stats(endpoints_built=1)
    assert work.serialized == {"ClusterLoadAssignment": 1}


def test_editing_one_tls_kingress_of_200_leaves_the_https_listener_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = translated(*many_kingresses(200, tls=True))
    work = work_done(gateway, monkeypatch, edited("k7", tls=True))
    tables = {"external/default/k7", "internal/default/k7", "external-tls/default/k7"}
    assert work.touched == {ROUTE: tables}
    assert work.stats == Stats(ingresses_translated=1, route_tables_built=3)
    assert work.serialized == {"RouteConfiguration": 3}


def test_rotating_one_certificate_of_100_reserializes_only_its_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = translated(*many_kingresses(200, tls=True))
    work = work_done(gateway, monkeypatch, a_secret("k11-tls", cert=rotated("k11")))
    assert work.touched == {SECRET: {"default/k11-tls"}}
    assert work.serialized == {"Secret": 1}
    assert work.stats == Stats()
