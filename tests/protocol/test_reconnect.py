"""Reconnects and repeated first requests: what a gateway holds from before is kept safe.

A gateway that comes back (to a restarted control plane, or re-sending its first
request on a stream) may still hold route tables naming clusters the new state
no longer has. It must not be told those clusters are gone before the tables
naming them are replaced, and a table must not reach it before the clusters it
names are accepted again.
"""

from __future__ import annotations

from knative_xds import synth
from knative_xds.resources import CLUSTER, ROUTE

from .conftest import HELLO_TABLES, Harness, cluster, tables
from .xds_client import names_in

HELLO, HELLO_2, OTHER = cluster("hello-1"), cluster("hello-2"), cluster("other-1")
TABLES = HELLO_TABLES + tables("other")


def versions(response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


async def _held_by_a_delta_gateway(harness: Harness) -> tuple[dict[str, str], dict[str, str]]:
    """Clusters and route tables a Delta gateway accepted, before it went away."""
    first = harness.delta()
    await first.request(CLUSTER)
    clusters = await first.recv(CLUSTER)
    await first.ack(clusters)
    await first.request(ROUTE, TABLES)
    routes = await first.recv(ROUTE)
    await first.ack(routes)
    await harness.caught_up(first)
    await first.close()
    return versions(clusters), versions(routes)


async def test_delta_reconnect_keeps_a_gone_cluster_until_the_tables_naming_it_are_replaced(
    harness: Harness,
) -> None:
    held_clusters, held_tables = await _held_by_a_delta_gateway(harness)
    # The new state (as after a restart) moved hello off hello-1: its cluster is gone.
    harness.world.move_hello_to("hello-2")
    assert HELLO not in harness.world.names(CLUSTER)

    again = harness.delta()
    await again.request(CLUSTER, initial=held_clusters)
    await again.request(ROUTE, TABLES, initial=held_tables)

    clusters = await again.recv(CLUSTER)
    assert (names_in(clusters), list(clusters.removed_resources)) == ([HELLO_2], [])
    await again.ack(clusters)
    # hello's tables now name hello-2, which the gateway accepted: they are sent (after an
    # empty first answer, if the route request was planned before that ACK was read).
    # Only once it accepted them, with no table it holds naming hello-1, is hello-1 removed.
    removal = await _cluster_response_after_tables(again, HELLO_TABLES)
    assert (names_in(removal), list(removal.removed_resources)) == ([], [HELLO])


async def _cluster_response_after_tables(client, expected: list[str]):
    """Accept route responses until `expected` came; the next cluster response, which
    must come only after that."""
    got: set[str] = set()
    while True:
        response = await client.recv()
        if response.type_url == CLUSTER:
            assert got == set(expected), f"clusters changed before the tables: {got}"
            return response
        assert response.type_url == ROUTE
        got |= set(names_in(response)) | set(response.removed_resources)
        await client.ack(response)


async def test_delta_reconnect_with_tables_of_unknown_content_keeps_every_gone_cluster(
    harness: Harness,
) -> None:
    """Tables with a version this process never made may name anything: until they are
    sent anew, no cluster the gateway holds is removed."""
    held_clusters, _ = await _held_by_a_delta_gateway(harness)
    harness.world.delete(synth.route("other", []))
    strange = {name: "from-another-server" for name in TABLES}

    again = harness.delta()
    await again.request(CLUSTER, initial=held_clusters)
    await again.request(ROUTE, TABLES, initial=strange)
    clusters = await again.recv(CLUSTER)
    assert list(clusters.removed_resources) == []
    await again.ack(clusters)
    # other's tables are gone, hello's sent anew: then the client's tables are known.
    removal = await _cluster_response_after_tables(again, TABLES)
    assert list(removal.removed_resources) == [OTHER]


async def test_sotw_repeated_first_request_holds_tables_until_clusters_are_accepted_again(
    harness: Harness,
) -> None:
    """A gateway that re-sends its first requests may have lost what it had: a new
    table reaches it only after it accepts the clusters that table names, again."""
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))
    await client.request(ROUTE, HELLO_TABLES)
    await client.ack(await client.recv(ROUTE))
    await harness.caught_up(client)
    harness.world.add_revision_to_hello()  # hello's tables now name hello-2 too
    await client.ack(await client.recv(CLUSTER))
    await client.ack(await client.recv(ROUTE))
    await harness.caught_up(client)

    await client.request(CLUSTER, version="")
    await client.request(ROUTE, HELLO_TABLES, version="")
    await harness.caught_up(client)
    resent = await client.recv(CLUSTER)
    assert {HELLO, HELLO_2} <= set(names_in(resent))
    # A second change after the first: if the tables had gone out before the clusters
    # were accepted again, they would arrive before this.
    harness.world.add_later_route()
    assert cluster("later-1") in names_in(await client.recv(CLUSTER))
    await client.ack(client.last[CLUSTER])
    assert sorted(names_in(await client.recv(ROUTE))) == HELLO_TABLES
