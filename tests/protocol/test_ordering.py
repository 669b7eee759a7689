"""Make before break across types, for SotW and Delta alike.

The client here behaves as Envoy does with ADS (envoy_like.py).
"""

from __future__ import annotations

from knative_xds import synth
from knative_xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SCOPED_ROUTE,
    SECRET,
)

from .conftest import HELLO_TABLES, Harness, cluster, tables
from .envoy_like import Gateway, clusters_named, removed
from .xds_client import DeltaClient, SotwClient, names_in

HELLO, HELLO_2, OTHER = cluster("hello-1"), cluster("hello-2"), cluster("other-1")
OTHER_TABLES = tables("other")


def test_push_order_is_clusters_endpoints_secrets_listeners_scopes_routes() -> None:
    assert PUSH_ORDER == (CLUSTER, ENDPOINT, SECRET, LISTENER, SCOPED_ROUTE, ROUTE)


async def test_adding_a_revision_sends_clusters_then_endpoints_then_routes(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()
    seen = len(gateway.client.received)

    harness.world.add_revision_to_hello()

    clusters = await gateway.recv(CLUSTER)
    assert HELLO_2 in names_in(clusters)
    await gateway.ask(ENDPOINT, [HELLO_2])
    await gateway.ack(clusters)
    endpoints = await gateway.recv(ENDPOINT)
    assert names_in(endpoints) == [HELLO_2]
    await gateway.ack(endpoints)
    tables = await gateway.recv(ROUTE)
    assert sorted(names_in(tables)) == HELLO_TABLES
    assert HELLO_2 in clusters_named(tables)
    order = [r.type_url for r in gateway.client.received[seen:]]
    assert order == [CLUSTER, ENDPOINT, ROUTE]


async def test_routes_naming_a_new_cluster_wait_for_the_endpoints_ack(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()
    harness.world.add_revision_to_hello()
    clusters = await gateway.recv(CLUSTER)
    await gateway.ask(ENDPOINT, [HELLO_2])
    await gateway.ack(clusters)
    endpoints = await gateway.recv(ENDPOINT)

    # The cluster is still warming on the client: other's tables may go, hello's not yet.
    await gateway.ack(await harness.barrier(gateway.client, ROUTE, "other-1", OTHER_TABLES))

    await gateway.ack(endpoints)
    assert HELLO_2 in clusters_named(await gateway.recv(ROUTE))


async def test_routes_naming_a_new_cluster_wait_for_the_clusters_ack(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()
    harness.world.add_revision_to_hello()
    clusters = await gateway.recv(CLUSTER)
    await gateway.ask(ENDPOINT, [HELLO_2])
    await gateway.ack(await gateway.recv(ENDPOINT))

    # Endpoints accepted, the cluster not yet: other's tables may go, hello's not yet.
    await gateway.ack(await harness.barrier(gateway.client, ROUTE, "other-1", OTHER_TABLES))

    await gateway.ack(clusters)
    assert HELLO_2 in clusters_named(await gateway.recv(ROUTE))


async def test_routes_wait_for_endpoints_even_when_the_clusters_ack_comes_before_asking(
    harness: Harness, gateway: Gateway
) -> None:
    """A client that ACKs CDS before it asks for the new cluster's endpoints must not get
    routes to a cluster that has none yet."""
    await gateway.converge()
    harness.world.add_revision_to_hello()
    await gateway.ack(await gateway.recv(CLUSTER))

    # HELLO_2 has no endpoints on the client yet: other's tables may go, hello's not yet.
    await gateway.ack(await harness.barrier(gateway.client, ROUTE, "other-1", OTHER_TABLES))

    await gateway.ask(ENDPOINT, [HELLO_2])
    await gateway.ack(await gateway.recv(ENDPOINT))
    assert HELLO_2 in clusters_named(await gateway.recv(ROUTE))


async def test_routes_naming_a_cluster_the_client_rejected_are_held_back(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()
    harness.world.add_revision_to_hello()
    clusters = await gateway.recv(CLUSTER)

    await gateway.client.nack(clusters)

    # Routes to HELLO_2 would fail on this client: other's tables may go, hello's not.
    await harness.barrier(gateway.client, ROUTE, "other-1", OTHER_TABLES)


async def test_removing_a_revision_keeps_its_cluster_until_routes_without_it_are_acked(
    harness: Harness, gateway: Gateway
) -> None:
    harness.world.add_revision_to_hello()
    await gateway.converge()

    harness.world.move_hello_to("hello-2")  # hello-1 loses its last Route

    tables = await gateway.recv(ROUTE)  # routes first: nothing else changed for the client
    assert HELLO not in clusters_named(tables)
    # HELLO's cluster stays while its old routes may serve: no CDS before other's endpoints.
    await gateway.ack(await harness.barrier(gateway.client, ENDPOINT, "other-1", [OTHER]))
    await gateway.ack(tables)
    clusters = await gateway.recv(CLUSTER)
    if isinstance(gateway.client, DeltaClient):
        assert removed(clusters) == [HELLO]
        endpoints = await gateway.recv(ENDPOINT)
        assert removed(endpoints) == [HELLO]
    else:
        assert sorted(names_in(clusters)) == [HELLO_2, OTHER]


async def test_replacing_a_revision_adds_the_new_cluster_before_dropping_the_old(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()

    harness.world.move_hello_to("hello-2")

    clusters = await gateway.recv(CLUSTER)
    if isinstance(gateway.client, SotwClient):
        # Full state: the old cluster is still in it, since the client's routes name it.
        assert sorted(names_in(clusters)) == [HELLO, HELLO_2, OTHER]
    else:
        assert (names_in(clusters), removed(clusters)) == ([HELLO_2], [])
    await gateway.ask(ENDPOINT, [HELLO_2])
    await gateway.ack(clusters)
    await gateway.ack(await gateway.recv(ENDPOINT))
    tables = await gateway.recv(ROUTE)
    assert sorted(names_in(tables)) == HELLO_TABLES
    assert clusters_named(tables) == {HELLO_2}
    await gateway.ack(tables)
    clusters = await gateway.recv(CLUSTER)
    if isinstance(gateway.client, SotwClient):
        assert sorted(names_in(clusters)) == [HELLO_2, OTHER]
    else:
        assert removed(clusters) == [HELLO]


async def test_a_changed_cluster_gets_its_unchanged_endpoints_sent_again_unasked(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()
    endpoints_version = harness.world.version(ENDPOINT, HELLO)

    harness.world.apply(synth.revision("hello-1", ready=True, h2c=True))

    clusters = await gateway.recv(CLUSTER)
    assert HELLO in names_in(clusters)
    endpoints = await gateway.recv(ENDPOINT)  # Envoy re-warms the cluster but will not ask
    assert names_in(endpoints) == [HELLO]
    assert harness.world.version(ENDPOINT, HELLO) == endpoints_version  # same content


async def test_one_publish_touching_every_type_is_sent_clusters_endpoints_routes_in_order(
    harness: Harness, flavour: str
) -> None:
    """A wildcard client on every type gets one snapshot's changes in push order."""
    client = harness.delta() if flavour == "delta" else harness.sotw()
    for type_url in PUSH_ORDER:
        await client.request(type_url)
        await client.ack(await client.recv(type_url))

    harness.world.add_revision_to_hello()

    clusters = await client.recv(CLUSTER)
    endpoints = await client.recv(ENDPOINT)
    await client.ack(clusters)
    await client.ack(endpoints)
    tables = await client.recv(ROUTE)
    assert HELLO_2 in names_in(clusters)
    assert HELLO_2 in names_in(endpoints)
    assert HELLO_2 in clusters_named(tables)
