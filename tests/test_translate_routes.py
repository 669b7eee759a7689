"""Route tables and scopes, compared as whole Envoy messages.

Each Knative Route gets its own RouteConfiguration per listener it has hosts on,
`<listener>/<namespace>/<route>`, and ScopedRouteConfigurations naming that
table: on the external listener one per host, `external/<host>`, keyed by the
host (one fragment); on the internal one, one per cluster-local name,
`internal/<name>.<namespace>`, keyed by those two labels (two fragments), which
all three of its hosts start with. Inputs are Knative objects run through the
Resolver; expected messages are spelled out here, not taken from the code under
test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE, SCOPED_ROUTE
from tests.helpers import as_bytes, assert_proto_equal, changes, deleted, translated, world

T = synth.target
NS = "default"
ACTIVATOR = synth.activator_slice("10.1.0.1", 8012, 8013)


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
            set_header("Knative-Serving-Namespace", ns),
            set_header("Knative-Serving-Revision", revision),
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
        name=f"Knative-Serving-Tag={tag}",
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


def want_scope(listener: str, key: str, table: str) -> scoped_route_pb2.ScopedRouteConfiguration:
    """External `key`: a host, one fragment. Internal: `name.namespace`, two fragments."""
    fragments = [key] if listener == "external" else key.split(".")
    msg = scoped_route_pb2.ScopedRouteConfiguration
    return msg(
        name=f"{listener}/{key}",
        route_configuration_name=table,
        key=msg.Key(fragments=[msg.Key.Fragment(string_key=f) for f in fragments]),
    )


def hosts_of(vhosts: list[rc.VirtualHost]) -> list[str]:
    return [d for v in vhosts for d in v.domains if not d.endswith(":*")]


def scope_keys(listener: str, vhosts: list[rc.VirtualHost]) -> list[str]:
    """External: every host. Internal: each virtual host's first two labels, which for a
    cluster-local one is its short name, `name.namespace`."""
    if listener == "external":
        return hosts_of(vhosts)
    return [".".join(hosts_of([v])[0].split(".")[:2]) for v in vhosts]


def clusters_of(vhosts: list[rc.VirtualHost]) -> set[str]:
    return {w.name for v in vhosts for r in v.routes for w in r.route.weighted_clusters.clusters}


# -- one table per Route per listener ------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    objects: list[dict[str, Any]]
    # Table name → its virtual hosts, in order: the main host first, then tags by tag.
    want: dict[str, list[rc.VirtualHost]]


HELLO_EXT = ["hello.default.example.com"]
V2_EXT = ["v2-hello.default.example.com"]
ONE = ("hello-1", 100)
EXT, INT = "external/default/hello", "internal/default/hello"
NINETY_TEN = (("hello-1", 90), ("hello-2", 10))

TABLES = {
    "public-route-on-both-listeners": Tables(
        [synth.route("hello", [T("hello-1", 100)])],
        {
            EXT: [vhost("hello", HELLO_EXT, default_route(ONE))],
            INT: [vhost("hello", svc("hello"), default_route(ONE))],
        },
    ),
    "cluster-local-route-only-internal": Tables(
        [synth.route("hello", [T("hello-1", 100)], cluster_local=True)],
        {INT: [vhost("hello", svc("hello"), default_route(ONE))]},
    ),
    "split-90-10-with-tag-host": Tables(
        [synth.route("hello", [T("hello-1", 90), T("hello-2", 10, tag="v2")])],
        {
            EXT: [
                vhost("hello", HELLO_EXT, default_route(*NINETY_TEN)),
                vhost("hello", V2_EXT, default_route(("hello-2", 100))),
            ],
            INT: [
                vhost("hello", svc("hello"), default_route(*NINETY_TEN)),
                vhost("hello", svc("v2-hello"), default_route(("hello-2", 100))),
            ],
        },
    ),
    "zero-percent-target-absent-from-split": Tables(
        [synth.route("hello", [T("hello-1", 100), T("hello-2", 0)])],
        {
            EXT: [vhost("hello", HELLO_EXT, default_route(ONE))],
            INT: [vhost("hello", svc("hello"), default_route(ONE))],
        },
    ),
    "idle-timeout-follows-the-longest-revision-timeout": Tables(
        [
            synth.revision("slow-1", timeout=900),
            synth.revision("fast-1", timeout=30),
            synth.route("hello", [T("slow-1", 50), T("fast-1", 50, tag="fast")]),
        ],
        {
            EXT: [
                vhost("hello", HELLO_EXT, default_route(("fast-1", 50), ("slow-1", 50), idle=900)),
                vhost(
                    "hello",
                    ["fast-hello.default.example.com"],
                    default_route(("fast-1", 100), idle=30),
                ),
            ],
            INT: [
                vhost(
                    "hello", svc("hello"), default_route(("fast-1", 50), ("slow-1", 50), idle=900)
                ),
                vhost("hello", svc("fast-hello"), default_route(("fast-1", 100), idle=30)),
            ],
        },
    ),
    "tag-header-routes-before-the-default": Tables(
        [
            synth.config_map("config-network", {"tag-header-based-routing": "enabled"}),
            synth.route("hello", [T("hello-1", 100, tag="v1"), T("hello-2", 0, tag="v2")]),
        ],
        {
            EXT: [
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
            INT: [
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
        },
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
        {
            EXT: [
                vhost("hello", ["hello-default.knative.dev"], default_route(ONE)),
                vhost("hello", ["hello-v1-default.knative.dev"], default_route(ONE)),
            ],
            INT: [
                vhost("hello", svc("hello"), default_route(ONE)),
                vhost("hello", svc("hello-v1"), default_route(ONE)),
            ],
        },
    ),
    "namespace-in-names-and-headers": Tables(
        [
            synth.revision("hello-1", namespace="team"),
            synth.route("hello", [T("hello-1", 100)], namespace="team"),
        ],
        {
            "external/team/hello": [
                vhost("hello", ["hello.team.example.com"], default_route(ONE, ns="team"), ns="team")
            ],
            "internal/team/hello": [
                vhost("hello", svc("hello", "team"), default_route(ONE, ns="team"), ns="team")
            ],
        },
    ),
    "each-route-its-own-tables": Tables(
        [
            synth.route("zeta", [T("hello-1", 100)]),
            synth.route("alpha", [T("hello-2", 100)], cluster_local=True),
        ],
        {
            "external/default/zeta": [
                vhost("zeta", ["zeta.default.example.com"], default_route(ONE))
            ],
            "internal/default/zeta": [vhost("zeta", svc("zeta"), default_route(ONE))],
            "internal/default/alpha": [
                vhost("alpha", svc("alpha"), default_route(("hello-2", 100)))
            ],
        },
    ),
}


def _public_hosts_inside(case: Tables) -> Tables:
    """ExternalIP hosts answer on the internal listener too (Knative's visibility contract):
    an internal table holds each public virtual host before the cluster-local one of the
    same traffic name, in the Route's rule order."""
    want = dict(case.want)
    for name, local in case.want.items():
        public = case.want.get(name.replace("internal/", "external/", 1), [])
        if name.startswith("internal/") and public:
            want[name] = [v for pair in zip(public, local, strict=True) for v in pair]
    return Tables(case.objects, want)


TABLES = {name: _public_hosts_inside(case) for name, case in TABLES.items()}


@pytest.mark.parametrize("case", TABLES.values(), ids=TABLES.keys())
def test_route_tables(case: Tables) -> None:
    gateway = translated(*world(), *case.objects)
    assert gateway.names(ROUTE) == set(case.want)
    for name, vhosts in case.want.items():
        got = gateway.get(ROUTE, name, route_pb2.RouteConfiguration)
        want = route_pb2.RouteConfiguration(
            name=name, virtual_hosts=vhosts, most_specific_header_mutations_wins=True
        )
        assert_proto_equal(got, want)
        # A table refers to the clusters it sends to, so they are pushed before it.
        assert gateway.resources[ROUTE][name].refs == tuple(sorted(clusters_of(vhosts)))


@pytest.mark.parametrize("case", TABLES.values(), ids=TABLES.keys())
def test_one_scope_per_public_host_and_per_cluster_local_name_names_its_routes_table(
    case: Tables,
) -> None:
    gateway = translated(*world(), *case.objects)
    want = {
        f"{listener}/{key}": (listener, key, table)
        for table, vhosts in case.want.items()
        for listener in [table.split("/")[0]]
        for key in scope_keys(listener, vhosts)
    }
    assert gateway.names(SCOPED_ROUTE) == set(want)
    for name, (listener, key, table) in want.items():
        got = gateway.get(SCOPED_ROUTE, name, scoped_route_pb2.ScopedRouteConfiguration)
        assert_proto_equal(got, want_scope(listener, key, table))
        assert gateway.resources[SCOPED_ROUTE][name].refs == (table,)


def test_scopes_spelled_out_for_a_public_route() -> None:
    gateway = translated(*world(), synth.route("hello", [T("hello-1", 100)]))
    scope = scoped_route_pb2.ScopedRouteConfiguration
    frag = scope.Key.Fragment
    want = {
        "external/hello.default.example.com": scope(
            name="external/hello.default.example.com",
            route_configuration_name="external/default/hello",
            key=scope.Key(fragments=[frag(string_key="hello.default.example.com")]),
        ),
        # One for `hello.default`, `hello.default.svc` and `hello.default.svc.cluster.local`.
        "internal/hello.default": scope(
            name="internal/hello.default",
            route_configuration_name="internal/default/hello",
            key=scope.Key(fragments=[frag(string_key="hello"), frag(string_key="default")]),
        ),
    }
    assert gateway.names(SCOPED_ROUTE) == set(want)
    for name, message in want.items():
        assert_proto_equal(gateway.get(SCOPED_ROUTE, name, scope), message)


def test_cluster_local_route_has_no_external_table_or_scope() -> None:
    # No external scope means the external listener answers its hosts with a 404.
    gateway = translated(
        *world(), synth.route("hello", [T("hello-1", 100, tag="v1")], cluster_local=True)
    )
    assert gateway.names(ROUTE) == {INT}
    assert all(n.startswith("internal/") for n in gateway.names(SCOPED_ROUTE))
    keys = [
        gateway.get(SCOPED_ROUTE, n, scoped_route_pb2.ScopedRouteConfiguration).key
        for n in gateway.names(SCOPED_ROUTE)
    ]
    assert sorted(tuple(f.string_key for f in k.fragments) for k in keys) == [
        ("hello", "default"),
        ("v1-hello", "default"),
    ]


def test_tag_names_of_one_route_that_share_their_first_two_labels_share_one_scope() -> None:
    # A tag-template with dots makes `hello.t.v1` and `hello.t.v2`: both start with
    # `hello.t`, and both live in the Route's one internal table.
    config = synth.config_map("config-network", {"tag-template": "{{.Name}}.t.{{.Tag}}"})
    route = synth.route("hello", [T("hello-1", 50, tag="v1"), T("hello-2", 50, tag="v2")])
    gateway = translated(*world(), config, route)
    internal = {n for n in gateway.names(SCOPED_ROUTE) if n.startswith("internal/")}
    assert internal == {"internal/hello.default", "internal/hello.t"}
    for key in ("hello.default", "hello.t"):
        got = gateway.get(
            SCOPED_ROUTE, f"internal/{key}", scoped_route_pb2.ScopedRouteConfiguration
        )
        assert_proto_equal(got, want_scope("internal", key, INT))
    table = gateway.get(ROUTE, INT, route_pb2.RouteConfiguration)
    assert hosts_of(list(table.virtual_hosts)) == [
        "hello.default.example.com",
        *svc("hello"),
        "hello.t.v1.default.example.com",
        *svc("hello.t.v1"),
        "hello.t.v2.default.example.com",
        *svc("hello.t.v2"),
    ]


def test_route_action_has_timeout_zero_and_no_retries() -> None:
    gateway = translated(*world(), synth.route("hello", [T("hello-1", 100)]))
    for name in (EXT, INT):
        for vh in gateway.get(ROUTE, name, route_pb2.RouteConfiguration).virtual_hosts:
            action = vh.routes[0].route
            # Present and zero: an unset timeout is Envoy's 15 s default.
            assert action.HasField("timeout") and action.timeout.ToSeconds() == 0
            assert not action.HasField("retry_policy")
            assert not vh.HasField("retry_policy")


# -- edits ---------------------------------------------------------------------------------------


def scope_names(listener_keys: dict[str, list[str]]) -> set[str]:
    return {f"{listener}/{k}" for listener, keys in listener_keys.items() for k in keys}


def test_deleting_a_route_removes_its_tables_scopes_clusters_and_endpoints() -> None:
    shared = synth.route("a", [T("hello-1", 100)])
    doomed = synth.route("b", [T("hello-1", 50), T("hello-2", 50, tag="v2")])
    gateway = translated(*world(), shared, doomed, ACTIVATOR)
    gateway.apply(doomed, delete=True)
    b_hosts = {
        "external": ["b.default.example.com", "v2-b.default.example.com"],
        "internal": ["b.default", "v2-b.default"],
    }
    assert gateway.removed == {
        ROUTE: {"external/default/b", "internal/default/b"},
        SCOPED_ROUTE: scope_names(b_hosts),
        CLUSTER: {"default/hello-2"},
        ENDPOINT: {"default/hello-2"},
    }
    assert gateway.names(ROUTE) == {"external/default/a", "internal/default/a"}
    a_hosts = {"external": ["a.default.example.com"], "internal": ["a.default"]}
    assert gateway.names(SCOPED_ROUTE) == scope_names(a_hosts)
    assert gateway.names(CLUSTER) == gateway.names(ENDPOINT) == {"default/hello-1"}


def test_renaming_a_tag_replaces_the_tag_hosts_scopes() -> None:
    gateway = translated(*world(), synth.route("hello", [T("hello-1", 100, tag="v1")]))
    touched = gateway.apply(synth.route("hello", [T("hello-1", 100, tag="v2")]))
    old = scope_names(
        {"external": ["v1-hello.default.example.com"], "internal": ["v1-hello.default"]}
    )
    new = scope_names({"external": V2_EXT, "internal": ["v2-hello.default"]})
    assert gateway.removed == {SCOPED_ROUTE: old}
    assert touched == {ROUTE: {EXT, INT}, SCOPED_ROUTE: old | new}
    main = scope_names({"external": HELLO_EXT, "internal": ["hello.default"]})
    assert gateway.names(SCOPED_ROUTE) == main | new
    assert_proto_equal(
        gateway.get(ROUTE, EXT, route_pb2.RouteConfiguration),
        route_pb2.RouteConfiguration(
            name=EXT,
            virtual_hosts=[
                vhost("hello", HELLO_EXT, default_route(ONE)),
                vhost("hello", V2_EXT, default_route(ONE)),
            ],
            most_specific_header_mutations_wins=True,
        ),
    )


# A tag host (`<tag>-<route>`) can be another Route's main host: deleting that Route
# and adding the tag in one batch passes the host over. Both sort orders of the two
# Routes, since the translator handles changed Routes in name order.
HOST_MOVES = {
    "claimant-sorts-first": ("x-a", synth.route("a", [T("hello-1", 100, tag="x")])),
    "claimant-sorts-last": ("a-z", synth.route("z", [T("hello-1", 100, tag="a")])),
}


@pytest.mark.parametrize(("releaser", "claimant"), HOST_MOVES.values(), ids=HOST_MOVES.keys())
def test_a_host_passing_between_routes_keeps_its_scope(releaser: str, claimant: dict) -> None:
    gone = synth.route(releaser, [T("hello-2", 100)])
    gateway = translated(*world(), gone)
    gateway.change({**deleted(gone), **changes(claimant)})
    claimant_name = claimant["metadata"]["name"]
    host = f"{releaser}.default.example.com"
    got = gateway.get(SCOPED_ROUTE, f"external/{host}", scoped_route_pb2.ScopedRouteConfiguration)
    assert_proto_equal(got, want_scope("external", host, f"external/default/{claimant_name}"))
    # What the edits left equals a translation of the final state from scratch.
    assert as_bytes(gateway.resources) == as_bytes(translated(*world(), claimant).resources)
