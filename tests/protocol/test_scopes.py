"""Scoped routes (SRDS): one scope per public host and one per cluster-local name,
each naming its Route's own route table.

SRDS is a wildcard, full-state type like LDS and CDS: a SotW response carries
every scope, a Delta one what changed. Scopes go out after listeners and before
the route tables they name, and a Route that goes takes its scopes and route
tables with it, then its clusters once the client no longer holds a table
naming them.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2

from knative_xds import synth
from knative_xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SCOPED_ROUTE,
    Resource,
)
from knative_xds.translate import Delta, Listener
from knative_xds.translate.listeners import listener_resource
from knative_xds.translate.scopes import scope_resource

from .conftest import HELLO_TABLES, Harness, cluster, tables
from .envoy_like import Gateway, removed
from .xds_client import messages_in, names_in, tables_named

HELLO, OTHER, LATER = cluster("hello-1"), cluster("other-1"), cluster("later-1")


def scopes(route: str) -> list[str]:
    """The scopes of a public Route in the default namespace, sorted: one for its host,
    one for its three cluster-local hosts (`<route>.default`, `.svc`, `.svc.cluster.local`)."""
    return [f"external/{route}.default.example.com", f"internal/{route}.default"]


async def subscribe_everything(client) -> None:
    """Wildcard on every type, each first response accepted."""
    for type_url in PUSH_ORDER:
        await client.request(type_url)
        await client.ack(await client.recv(type_url))


# -- full state in SotW, changes in Delta ------------------------------------------------


async def test_sotw_scopes_response_carries_every_scope_each_naming_its_routes_table(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(SCOPED_ROUTE)

    response = await client.recv(SCOPED_ROUTE)

    assert sorted(names_in(response)) == sorted(scopes("hello") + scopes("other"))
    named = {n: m.route_configuration_name for n, m in messages_in(response).items()}
    assert named["external/hello.default.example.com"] == "external/default/hello"
    assert named["internal/hello.default"] == "internal/default/hello"
    assert tables_named(response) == sorted(HELLO_TABLES + tables("other"))


async def test_sotw_scopes_response_after_a_route_is_added_carries_every_scope(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(SCOPED_ROUTE)
    await client.ack(await client.recv(SCOPED_ROUTE))

    harness.world.add_later_route()

    response = await client.recv(SCOPED_ROUTE)
    assert sorted(names_in(response)) == sorted(scopes("hello") + scopes("other") + scopes("later"))


async def test_sotw_scopes_response_after_a_route_is_deleted_carries_every_remaining_scope(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(SCOPED_ROUTE)
    await client.ack(await client.recv(SCOPED_ROUTE))

    harness.world.delete(synth.route("other", []))

    response = await client.recv(SCOPED_ROUTE)
    assert sorted(names_in(response)) == scopes("hello")  # full state: what is absent is gone


async def test_delta_scopes_responses_carry_only_what_changed(harness: Harness) -> None:
    client = harness.delta()
    await client.request(SCOPED_ROUTE)
    await client.ack(await client.recv(SCOPED_ROUTE))

    harness.world.add_later_route()
    added = await client.recv(SCOPED_ROUTE)
    assert (sorted(names_in(added)), removed(added)) == (scopes("later"), [])
    await client.ack(added)

    harness.world.delete(synth.route("other", []))
    gone = await client.recv(SCOPED_ROUTE)
    assert (names_in(gone), sorted(removed(gone))) == ([], scopes("other"))


# -- order ---------------------------------------------------------------------------------


def extra_table(cluster_name: str) -> Resource:
    """A route table for one more host, on a cluster that already exists."""
    msg = route_pb2.RouteConfiguration(name="external/default/extra")
    return Resource.of(msg, name=msg.name, refs=[cluster_name])


async def test_one_publish_touching_listeners_scopes_and_tables_sends_them_in_that_order(
    harness: Harness, flavour: str
) -> None:
    """No Knative edit changes a listener, so this publishes to the cache directly."""
    client = harness.delta() if flavour == "delta" else harness.sotw()
    await subscribe_everything(client)
    delta = Delta()
    delta.set(listener_resource(listener=Listener.EXTERNAL, address="127.0.0.1", port=18090))
    table = extra_table(HELLO)
    delta.set(table)
    delta.set(scope_resource(Listener.EXTERNAL, ("extra.example.com",), table.name))

    assert harness.plane.cache.apply(delta) is not None

    order = [(await client.recv()).type_url for _ in range(3)]
    assert order == [LISTENER, SCOPED_ROUTE, ROUTE]


async def test_a_route_added_on_a_revision_the_client_holds_sends_scopes_then_tables(
    harness: Harness, flavour: str
) -> None:
    client = harness.delta() if flavour == "delta" else harness.sotw()
    await subscribe_everything(client)

    harness.world.apply(synth.route("later", [synth.target("hello-1", 100)]))

    scoped = await client.recv(SCOPED_ROUTE)  # nothing new for CDS, EDS or LDS
    routes = await client.recv(ROUTE)
    assert set(tables("later")) <= set(tables_named(scoped))  # SotW: with every other scope
    assert sorted(names_in(routes)) == tables("later")


async def test_a_route_added_reaches_envoy_as_clusters_scopes_then_its_tables_last(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()

    harness.world.add_later_route()
    taken = await gateway.settle()

    def index(type_url: str) -> int:
        return next(i for i, r in enumerate(taken) if r.type_url == type_url)

    assert LATER in names_in(taken[index(CLUSTER)])
    assert names_in(taken[index(ENDPOINT)]) == [LATER]
    assert sorted(names_in(taken[index(SCOPED_ROUTE)])) == (
        scopes("later")
        if gateway.delta
        else sorted(scopes("hello") + scopes("other") + scopes("later"))
    )
    assert sorted(names_in(taken[index(ROUTE)])) == tables("later")
    # The tables come last: after the scopes that name them and the endpoints they need.
    assert index(SCOPED_ROUTE) < index(ROUTE) and index(ENDPOINT) < index(ROUTE)
    assert LISTENER not in [r.type_url for r in taken]
    assert sorted(gateway.asked(ROUTE)) == sorted(HELLO_TABLES + tables("other") + tables("later"))


# -- a Route deleted -------------------------------------------------------------------------


async def test_a_route_deleted_takes_its_scopes_and_tables_then_its_clusters_once_let_go(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()

    harness.world.delete(synth.route("other", []))

    scoped = await gateway.recv(SCOPED_ROUTE)
    if gateway.delta:
        assert (names_in(scoped), sorted(removed(scoped))) == ([], scopes("other"))
        routes = await gateway.recv(ROUTE)
        assert (names_in(routes), sorted(removed(routes))) == ([], tables("other"))
    else:
        assert sorted(names_in(scoped)) == scopes("hello")
    # OTHER stays while the client holds tables naming it: no CDS before hello's endpoints.
    await gateway.ack(await harness.barrier(gateway.client, ENDPOINT, "hello-1", [HELLO]))

    await gateway.follow(scoped)  # Envoy drops the tables no scope names any more
    if gateway.delta:
        await gateway.ack(routes)

    clusters = await gateway.recv(CLUSTER)
    if gateway.delta:
        assert (names_in(clusters), removed(clusters)) == ([], [OTHER])
        endpoints = await gateway.recv(ENDPOINT)
        assert removed(endpoints) == [OTHER]
        await gateway.ack(endpoints)
    else:
        assert names_in(clusters) == [HELLO]
    await gateway.follow_clusters(clusters)
    # Nothing more of the deletion: RDS goes last, so any other push would come first.
    await harness.barrier(gateway.client, ROUTE, "hello-1", HELLO_TABLES)
    assert gateway.asked(ROUTE) == HELLO_TABLES
    assert gateway.asked(ENDPOINT) == [HELLO]
