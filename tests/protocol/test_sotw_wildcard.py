"""SotW subscriptions: which resources a request's name list means, step by step.

The sequences follow the xDS protocol's "How the client specifies what
resources to return": `[]` first is a wildcard, `*` is the explicit wildcard,
names without `*` end it, and `[]` after names means nothing.
"""

from __future__ import annotations

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE

from .conftest import HELLO_TABLES, Harness, cluster
from .xds_client import names_in

HELLO, OTHER, LATER = cluster("hello-1"), cluster("other-1"), cluster("later-1")


async def test_empty_first_request_is_a_wildcard_that_includes_later_resources(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, [])
    await client.ack(await client.recv(CLUSTER))

    harness.world.add_later_route()

    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER, LATER}


async def test_star_with_a_name_is_the_wildcard_plus_that_name(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, ["*", HELLO])
    await client.ack(await client.recv(CLUSTER))
    harness.world.add_later_route()
    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER, LATER}

    await client.ack(response, [HELLO])  # drop `*`: the explicit name remains

    response = await client.recv(CLUSTER)
    assert names_in(response) == [HELLO]


async def test_names_without_star_end_the_wildcard(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, [])
    await client.ack(await client.recv(CLUSTER), [HELLO])
    response = await client.recv(CLUSTER)
    assert names_in(response) == [HELLO]
    await client.ack(response)

    harness.world.add_later_route()

    # No longer a wildcard subscriber: LATER is not its business, in this or any next set.
    await harness.barrier(client, CLUSTER, "hello-1", expect=[HELLO])


async def test_empty_request_after_names_means_nothing_not_everything(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, [HELLO])
    await client.ack(await client.recv(CLUSTER), [])
    await harness.caught_up(client)

    harness.world.add_later_route()
    harness.world.apply(synth.revision("hello-1", ready=True, h2c=True))

    # Subscribed to nothing: neither new nor changed clusters (CDS would be planned first).
    await client.request(ENDPOINT, [HELLO])
    await client.expect_next_is(ENDPOINT, [HELLO])


async def test_resubscribing_after_unsubscribing_sends_the_resource_again(
    harness: Harness,
) -> None:
    """The client may have dropped what it unsubscribed from; an unchanged version must not
    stop the server from sending it again."""
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO, OTHER])
    first = await client.recv(ENDPOINT)
    await client.ack(first, [HELLO])
    # EDS is not full-state: dropping a name needs no response (RDS is planned after EDS).
    await client.request(ROUTE, [HELLO_TABLES[0]])
    await client.expect_next_is(ROUTE, [HELLO_TABLES[0]])

    await client.request(ENDPOINT, [HELLO, OTHER], nonce=first.nonce)

    response = await client.recv(ENDPOINT)
    assert names_in(response) == [OTHER]


async def test_repeated_first_request_without_a_nonce_gets_the_full_state_again(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.recv(CLUSTER)

    await client.request(CLUSTER)

    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER}
