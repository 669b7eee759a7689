"""Make before break across types, for SotW and Delta alike.

The client here behaves as Envoy does with ADS: clusters by wildcard, then
the endpoints of each cluster it receives by name (asked before it ACKs the
clusters, as Envoy resumes its paused EDS requests before the CDS ACK), then
listeners, then the route tables they name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE

from .conftest import Harness, cluster
from .xds_client import DeltaClient, SotwClient, messages_in, names_in

HELLO, HELLO_2, OTHER = cluster("hello-1"), cluster("hello-2"), cluster("other-1")
TABLES = ["external", "internal"]


class Gateway:
    """An Envoy-like ADS client over one raw stream, SotW or Delta."""

    def __init__(self, client: SotwClient | DeltaClient) -> None:
        self.client = client
        self.endpoints: list[str] = []

    async def subscribe_wildcard(self, type_url: str) -> None:
        await self.client.request(type_url)

    async def ask(self, type_url: str, names: Iterable[str]) -> None:
        """Add names to what this type asks for (a delta, or SotW's whole list again)."""
        new = [n for n in names if n not in self._asked(type_url)]
        if isinstance(self.client, DeltaClient):
            await self.client.request(type_url, new)
        else:
            last = self.client.last.get(type_url)
            await self.client.request(
                type_url, [*self._asked(type_url), *new], nonce=last.nonce if last else ""
            )
        self._asked(type_url).extend(new)

    def _asked(self, type_url: str) -> list[str]:
        if isinstance(self.client, SotwClient):
            return self.client.names.setdefault(type_url, [])
        return self.endpoints if type_url == ENDPOINT else []

    async def ack(self, response: Any) -> None:
        await self.client.ack(response)

    async def recv(self, type_url: str | None = None) -> Any:
        return await self.client.recv(type_url)

    async def converge(self) -> None:
        """Connect the way Envoy does and accept everything: clusters, endpoints, listeners, routes."""
        await self.subscribe_wildcard(CLUSTER)
        clusters = await self.recv(CLUSTER)
        await self.ask(ENDPOINT, names_in(clusters))
        await self.ack(clusters)
        await self.ack(await self.recv(ENDPOINT))
        await self.subscribe_wildcard(LISTENER)
        await self.ack(await self.recv(LISTENER))
        await self.ask(ROUTE, TABLES)
        await self.ack(await self.recv(ROUTE))


def removed(response: Any) -> list[str]:
    return list(getattr(response, "removed_resources", ()))


def clusters_named(tables: Any) -> set[str]:
    """Every cluster the route tables in a response send traffic to."""
    found = set()
    for table in messages_in(tables).values():
        for host in table.virtual_hosts:
            for route in host.routes:
                found.update(w.name for w in route.route.weighted_clusters.clusters)
                if route.route.cluster:
                    found.add(route.route.cluster)
    return found


@pytest.fixture
async def gateway(harness: Harness, flavour: str) -> Gateway:
    return Gateway(harness.delta() if flavour == "delta" else harness.sotw())


def test_push_order_is_clusters_endpoints_listeners_routes() -> None:
    assert PUSH_ORDER == (CLUSTER, ENDPOINT, LISTENER, ROUTE)


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
    assert sorted(names_in(tables)) == TABLES
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

    await gateway.client.expect_nothing()  # the cluster is still warming on the client

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

    await gateway.client.expect_nothing()  # endpoints accepted, the cluster not yet

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

    await gateway.client.expect_nothing()  # HELLO_2 has no endpoints on the client yet

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

    await gateway.client.expect_nothing()  # routes to HELLO_2 would fail on this client


async def test_removing_a_revision_keeps_its_cluster_until_routes_without_it_are_acked(
    harness: Harness, gateway: Gateway
) -> None:
    harness.world.add_revision_to_hello()
    await gateway.converge()

    harness.world.move_hello_to("hello-2")  # hello-1 loses its last Route

    tables = await gateway.recv(ROUTE)  # routes first: nothing else changed for the client
    assert HELLO not in clusters_named(tables)
    await gateway.client.expect_nothing()  # HELLO's cluster stays while its old routes may serve
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
    assert clusters_named(tables) == {HELLO_2, OTHER}
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
