"""Incremental (Delta) ADS: per-resource versions, only changes, explicit removals.

Every response is also checked by the client itself (xds_client.py): new nonce,
version set, resources of the response's type with a name and a version, no
name twice, no name both sent and removed.
"""

from __future__ import annotations

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

from .conftest import HELLO_TABLES, Harness, cluster
from .xds_client import names_in

HELLO, OTHER, LATER = cluster("hello-1"), cluster("other-1"), cluster("later-1")
EXTERNAL_HELLO = HELLO_TABLES[0]


def versions(response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


# -- what the first request gets ----------------------------------------------------------


async def test_initial_wildcard_request_gets_every_resource_with_its_own_version(
    harness: Harness,
) -> None:
    client = harness.delta()
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)
    assert versions(response) == {
        name: harness.world.version(CLUSTER, name) for name in (HELLO, OTHER)
    }
    assert response.system_version_info.startswith(harness.world.instance + "-")


async def test_initial_wildcard_listener_request_is_answered_at_once(harness: Harness) -> None:
    client = harness.delta()
    await client.request(LISTENER)
    response = await client.recv(LISTENER)
    assert set(names_in(response)) == {"external", "internal"}


async def test_initial_wildcard_request_with_nothing_to_send_gets_an_empty_response(
    bare_harness: Harness,
) -> None:
    client = bare_harness.delta()
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)  # the client's initial fetch ends with this
    assert (names_in(response), list(response.removed_resources)) == ([], [])


async def test_explicit_star_subscribes_to_every_resource(harness: Harness) -> None:
    client = harness.delta()
    await client.request(CLUSTER, ["*"])
    await client.ack(await client.recv(CLUSTER))
    harness.world.add_later_route()
    assert names_in(await client.recv(CLUSTER)) == [LATER]


async def test_names_in_the_first_request_are_not_a_wildcard(harness: Harness) -> None:
    client = harness.delta()
    await client.request(CLUSTER, [HELLO])
    response = await client.recv(CLUSTER)
    assert names_in(response) == [HELLO]
    await client.ack(response)

    harness.world.add_later_route()

    # LATER was never asked for: hello's next change comes alone.
    await harness.barrier(client, CLUSTER, "hello-1", expect=[HELLO])


# -- only what changed -----------------------------------------------------------------------


async def test_ack_gets_no_response_when_nothing_changed(harness: Harness) -> None:
    client = harness.delta()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))

    await harness.barrier(client, CLUSTER, "other-1", expect=[OTHER])  # HELLO not resent


async def test_only_the_changed_resource_is_sent(harness: Harness) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [HELLO, OTHER])
    first = await client.recv(ENDPOINT)
    await client.ack(first)

    harness.world.give_pods("hello-1", "10.1.0.1")

    response = await client.recv(ENDPOINT)
    assert names_in(response) == [HELLO]
    assert list(response.removed_resources) == []
    assert versions(response)[HELLO] != versions(first)[HELLO]


async def test_a_deleted_resource_is_listed_in_removed_resources(harness: Harness) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [HELLO, OTHER])
    await client.ack(await client.recv(ENDPOINT))

    harness.world.delete(synth.route("other", []))

    response = await client.recv(ENDPOINT)
    assert (names_in(response), list(response.removed_resources)) == ([], [OTHER])


async def test_a_subscribed_name_that_does_not_exist_is_reported_removed_once(
    harness: Harness,
) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [LATER])
    response = await client.recv(ENDPOINT)
    assert (names_in(response), list(response.removed_resources)) == ([], [LATER])
    await client.ack(response)
    await client.request(ROUTE, [EXTERNAL_HELLO])  # planned after EDS: said once is enough
    await client.expect_next_is(ROUTE, [EXTERNAL_HELLO])

    harness.world.add_later_route()

    assert names_in(await client.recv(ENDPOINT)) == [LATER]


# -- ACK and NACK ---------------------------------------------------------------------------


async def test_nack_is_recorded_and_the_rejected_resource_is_not_resent(
    harness: Harness,
) -> None:
    client = harness.delta("gateway-delta")
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))
    rejected = await client.recv(CLUSTER)

    await client.nack(rejected, "no h2c")

    await harness.barrier(client, CLUSTER, "hello-1", expect=[HELLO])  # and not OTHER again
    nack = harness.plane.ads.nacks[("gateway-delta", CLUSTER)]
    assert (nack.nonce, nack.message) == (rejected.nonce, "no h2c")


async def test_after_a_nack_the_next_different_version_is_sent(harness: Harness) -> None:
    client = harness.delta()
    await client.request(CLUSTER)
    accepted = await client.recv(CLUSTER)
    await client.ack(accepted)
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))
    await client.nack(await client.recv(CLUSTER))

    harness.world.apply(synth.revision("other-1", ready=True, h2c=False))

    response = await client.recv(CLUSTER)
    assert versions(response) == {OTHER: versions(accepted)[OTHER]}


async def test_ack_records_the_acknowledged_version(harness: Harness) -> None:
    client = harness.delta()
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)
    await client.ack(response)
    await harness.caught_up(client)
    stream = harness.stream_of(client)
    assert stream is not None
    assert stream.subs[CLUSTER].acked_version == response.system_version_info


# -- subscription changes and stale nonces --------------------------------------------------


async def test_subscribe_with_a_stale_nonce_is_honoured(harness: Harness) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [HELLO])
    first = await client.recv(ENDPOINT)
    harness.world.give_pods("hello-1", "10.1.0.1")
    await client.recv(ENDPOINT)

    await client.request(ENDPOINT, [OTHER], nonce=first.nonce)

    assert names_in(await client.recv(ENDPOINT)) == [OTHER]


async def test_unsubscribe_with_a_stale_nonce_is_honoured(harness: Harness) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [HELLO, OTHER])
    first = await client.recv(ENDPOINT)
    harness.world.give_pods("hello-1", "10.1.0.1")
    second = await client.recv(ENDPOINT)

    await client.request(ENDPOINT, unsubscribe=[OTHER], nonce=first.nonce)
    await client.ack(second)
    await harness.caught_up(client)
    harness.world.give_pods("other-1", "10.2.0.1")

    # OTHER changed, but the client no longer wants it: hello's next change comes alone.
    await harness.barrier(client, ENDPOINT, "hello-1", expect=[HELLO])


async def test_unsubscribing_a_name_the_wildcard_still_covers_sends_it_again(
    harness: Harness,
) -> None:
    """The client cannot tell whether the wildcard still gives it the resource; the server
    must say, by sending it (or listing it removed)."""
    client = harness.delta()
    await client.request(CLUSTER, ["*", HELLO])
    await client.ack(await client.recv(CLUSTER))

    await client.request(CLUSTER, unsubscribe=[HELLO])

    response = await client.recv(CLUSTER)
    assert (names_in(response), list(response.removed_resources)) == ([HELLO], [])
    await client.ack(response)
    harness.world.apply(synth.revision("hello-1", ready=True, h2c=True))
    assert names_in(await client.recv(CLUSTER)) == [HELLO]  # still covered by the wildcard


async def test_unsubscribing_the_only_name_stops_its_updates(harness: Harness) -> None:
    client = harness.delta()
    await client.request(ENDPOINT, [HELLO])
    await client.ack(await client.recv(ENDPOINT), unsubscribe=[HELLO])
    await harness.caught_up(client)

    harness.world.give_pods("hello-1", "10.1.0.1")

    await client.request(ENDPOINT, [OTHER])  # what it asks for next comes alone
    await client.expect_next_is(ENDPOINT, [OTHER])


# -- reconnecting -----------------------------------------------------------------------------


async def test_reconnect_with_initial_resource_versions_gets_only_what_differs(
    harness: Harness,
) -> None:
    first = harness.delta()
    await first.request(CLUSTER)
    held = versions(await first.recv(CLUSTER))
    await first.close()
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))

    again = harness.delta()
    await again.request(CLUSTER, initial=held)

    response = await again.recv(CLUSTER)
    assert (names_in(response), list(response.removed_resources)) == ([OTHER], [])


async def test_reconnect_holding_everything_current_gets_an_empty_response_at_once(
    harness: Harness,
) -> None:
    first = harness.delta()
    await first.request(CLUSTER)
    held = versions(await first.recv(CLUSTER))
    await first.close()

    again = harness.delta()
    await again.request(CLUSTER, initial=held)

    response = await again.recv(CLUSTER)  # the client's initial fetch ends with this
    assert (names_in(response), list(response.removed_resources)) == ([], [])


async def test_reconnect_holding_a_resource_that_is_gone_gets_it_removed(
    harness: Harness,
) -> None:
    first = harness.delta()
    await first.request(CLUSTER)
    held = versions(await first.recv(CLUSTER))
    await first.close()
    harness.world.delete(synth.route("other", []))

    again = harness.delta()
    await again.request(CLUSTER, initial=held)

    # Not in the first response: the client may still hold a route table naming the
    # cluster (a restart's first push keeps make-before-break against what it holds).
    first_response = await again.recv(CLUSTER)
    assert (names_in(first_response), list(first_response.removed_resources)) == ([], [])
    await again.ack(first_response)
    response = await again.recv(CLUSTER)
    assert (names_in(response), list(response.removed_resources)) == ([], [OTHER])


async def test_reconnect_with_a_version_this_server_never_made_gets_that_resource(
    harness: Harness,
) -> None:
    client = harness.delta()
    held = {HELLO: "from-another-server", OTHER: harness.world.version(CLUSTER, OTHER)}

    await client.request(CLUSTER, initial=held)

    response = await client.recv(CLUSTER)
    assert names_in(response) == [HELLO]
