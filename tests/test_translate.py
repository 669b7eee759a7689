"""Listeners, scope isolation, determinism and the O(change) guard of the translator.

Route tables and scopes are in test_translate_routes.py, clusters and endpoints
in test_translate_endpoints.py. Expected messages are spelled out here, not
taken from the code under test.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf.message import Message

import knative_xds.resources
from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, Resource
from knative_xds.translate import Stats
from knative_xds.translate.edge import EDGE, buffer_limit, connection_limit, harden
from tests.helpers import Gateway, ads, as_bytes, assert_proto_equal, packed, translated, world

T = synth.target
ACTIVATOR = synth.activator_slice("10.1.0.1", 8012, 8013)
ScopedRouteConfiguration = scoped_route_pb2.ScopedRouteConfiguration

# -- listeners -----------------------------------------------------------------------------------

KeyBuilder = hcm.ScopedRoutes.ScopeKeyBuilder


def extract(**kwargs: Any) -> KeyBuilder.FragmentBuilder:
    return KeyBuilder.FragmentBuilder(
        header_value_extractor=KeyBuilder.FragmentBuilder.HeaderValueExtractor(
            name=":authority", **kwargs
        )
    )


# The Host header, its port already stripped by the connection manager: external keys
# are the whole host; internal keys its first two DNS labels (`name`, `namespace`).
KEY_BUILDERS = {
    "external": KeyBuilder(fragments=[extract(index=0)]),
    "internal": KeyBuilder(
        fragments=[extract(element_separator=".", index=0), extract(element_separator=".", index=1)]
    ),
}


def want_listener(name: str, port: int) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm.HttpConnectionManager.AUTO,
        # `host:port` reaches the scope key and route matching as `host`.
        strip_any_host_port=True,
        # Scopes (SRDS) and the tables they name (RDS) both come over ADS.
        scoped_routes=hcm.ScopedRoutes(
            name=name,
            scope_key_builder=KEY_BUILDERS[name],
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
    # The edge limits (their values are checked through Envoy in tests/e2e/test_edge.py).
    harden(manager, EDGE, trusted_hops=0)
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=port)
        ),
        per_connection_buffer_limit_bytes=buffer_limit(),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.connection_limit",
                        typed_config=packed(connection_limit(name, EDGE)),
                    ),
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=packed(manager),
                    ),
                ]
            )
        ],
    )


@pytest.mark.parametrize(
    ("name", "port"),
    [("external", 8080), ("internal", 8081)],
    ids=["external-host-keys", "internal-first-two-labels-keys"],
)
def test_listener_scoped_routes_over_ads_and_websocket(name: str, port: int):
    gateway = translated()
    got = gateway.get(LISTENER, name, listener_pb2.Listener)
    assert_proto_equal(got, want_listener(name, port))
    # Scopes are one wildcard set, not named by the listener: nothing to wait for.
    assert gateway.resources[LISTENER][name].refs == ()


def test_empty_state_publishes_listeners_only() -> None:
    gateway = translated()
    assert gateway.names(LISTENER) == {"external", "internal"}
    assert set(gateway.resources) == {LISTENER}


# -- scope isolation -----------------------------------------------------------------------------


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


def hcm_of(gateway: Gateway, listener: str) -> hcm.HttpConnectionManager:
    [chain] = gateway.get(LISTENER, listener, listener_pb2.Listener).filter_chains
    manager = hcm.HttpConnectionManager()
    assert chain.filters[-1].typed_config.Unpack(manager)
    return manager


def test_no_external_key_can_match_an_internal_scope() -> None:
    # Each listener receives every scope; a key only matches a key of its own length.
    gateway = translated(*busy_world())
    built = {
        name: len(hcm_of(gateway, name).scoped_routes.scope_key_builder.fragments)
        for name in ("external", "internal")
    }
    assert built == {"external": 1, "internal": 2}
    scopes = {
        n: gateway.get(SCOPED_ROUTE, n, ScopedRouteConfiguration)
        for n in gateway.names(SCOPED_ROUTE)
    }
    per_listener = Counter(n.split("/")[0] for n in scopes)
    # Both kinds present: one external scope per public host, one internal per rule.
    assert per_listener == {"external": 3, "internal": 5}
    for name, scope in scopes.items():
        listener = name.split("/")[0]
        assert len(scope.key.fragments) == built[listener], name
        assert scope.route_configuration_name.startswith(f"{listener}/"), name
        if listener == "internal":
            assert len(scope.key.fragments) != built["external"], name
    # Envoy rejects a scope set holding one key twice.
    keys = [tuple(f.string_key for f in s.key.fragments) for s in scopes.values()]
    assert len(set(keys)) == len(keys)
    # The cluster-local Route `grpc` (tagged `stable`) has internal keys only.
    grpc = {k for k in keys if "grpc" in k[0]}
    assert grpc == {("grpc", "default"), ("stable-grpc", "default")}


# -- determinism ---------------------------------------------------------------------------------


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


MESSAGES: dict[str, type[Message]] = {
    ROUTE: route_pb2.RouteConfiguration,
    SCOPED_ROUTE: ScopedRouteConfiguration,
    LISTENER: listener_pb2.Listener,
}


def test_bodies_are_the_deterministic_serialization_of_their_message() -> None:
    gateway = translated(*busy_world())
    for type_url, cls in MESSAGES.items():
        for name, resource in gateway.resources[type_url].items():
            message = resource.message(cls)
            assert message.SerializeToString(deterministic=True) == resource.body, name


# -- the O(change) guard: work counted, not timed ------------------------------------------------


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


@dataclasses.dataclass
class Work:
    stats: Stats
    touched: dict[str, set[str]]
    serialized: int  # Resource.of calls: messages serialized and hashed


def work_done(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, *objs: dict[str, Any]) -> Work:
    calls = Counter[str]()
    real_of = Resource.of.__func__  # type: ignore[attr-defined]
    real_hash = knative_xds.resources.content_hash

    def counting_of(cls: type[Resource], message: Message, **kwargs: Any) -> Resource:
        calls["of"] += 1
        return real_of(cls, message, **kwargs)

    def counting_hash(data: bytes) -> str:
        calls["hash"] += 1
        return real_hash(data)

    before = dataclasses.replace(gateway.translator.stats)
    with monkeypatch.context() as m:
        m.setattr(Resource, "of", classmethod(counting_of))
        m.setattr(knative_xds.resources, "content_hash", counting_hash)
        touched = gateway.apply(*objs)
    # Every serialization goes through Resource.of, which hashes once.
    assert calls["hash"] == calls["of"]
    after = gateway.translator.stats
    names = [f.name for f in dataclasses.fields(Stats)]
    stats = Stats(**{n: getattr(after, n) - getattr(before, n) for n in names})
    return Work(stats, touched, calls["of"])


@pytest.fixture(scope="module", params=[200, 2000], ids=["200-routes", "2000-routes"])
def loaded(request: pytest.FixtureRequest) -> Gateway:
    return translated(*many_routes(request.param))


def test_one_split_edit_rebuilds_one_routes_tables_only(
    loaded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit = synth.route("r7", [T("r7-a", 70), T("r7-b", 30, tag="b")])
    work = work_done(loaded, monkeypatch, edit)
    assert work.stats == Stats(
        ingresses_translated=1,
        clusters_built=0,
        endpoints_built=0,
        route_tables_built=2,
        scopes_built=0,
    )
    # The split lives in the tables; the scopes (host → table) are kept as they were.
    assert work.touched == {ROUTE: {"external/default/r7", "internal/default/r7"}}
    # The same constant at 200 and 2,000 Routes: that Route's two tables.
    assert work.serialized == 2
    vhost = loaded.get(ROUTE, "external/default/r7", route_pb2.RouteConfiguration).virtual_hosts[0]
    weights = [(c.name, c.weight.value) for c in vhost.routes[0].route.weighted_clusters.clusters]
    assert weights == [("default/r7-a", 70), ("default/r7-b", 30)]


def test_one_pod_change_rebuilds_one_endpoint_set(
    loaded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = work_done(loaded, monkeypatch, synth.endpoint_slice("r9-b", ["10.9.9.9"], 8012))
    assert work.stats == Stats(endpoints_built=1)
    assert work.touched == {ENDPOINT: {"default/r9-b"}}
    assert work.serialized == 1


def test_one_tag_rename_sends_only_that_routes_changes(
    loaded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = work_done(
        loaded, monkeypatch, synth.route("r8", [T("r8-a", 50), T("r8-b", 50, tag="c")])
    )
    # Only the new tag's scopes are built (its external host, its cluster-local name);
    # the main host's are kept.
    old = {"external/b-r8.default.example.com", "internal/b-r8.default"}
    new = {"external/c-r8.default.example.com", "internal/c-r8.default"}
    assert work.stats == Stats(ingresses_translated=1, route_tables_built=2, scopes_built=len(new))
    assert loaded.removed == {SCOPED_ROUTE: old}
    assert work.touched == {
        ROUTE: {"external/default/r8", "internal/default/r8"},
        SCOPED_ROUTE: old | new,
    }
    assert work.serialized == 2 + len(new)
    assert CLUSTER not in work.touched
