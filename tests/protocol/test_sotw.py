"""State-of-the-world ADS: what each request gets, per the xDS protocol's SotW rules.

Every response is also checked by the client itself (xds_client.py): new nonce,
version set, resources of the response's type, no name twice.
"""

from __future__ import annotations

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

from .conftest import HELLO_TABLES, Harness, cluster, tables
from .xds_client import messages_in, names_in

HELLO, OTHER, LATER = cluster("hello-1"), cluster("other-1"), cluster("later-1")
EXTERNAL_HELLO, INTERNAL_HELLO = HELLO_TABLES


# -- what the first request gets ----------------------------------------------------------


async def test_initial_wildcard_lds_request_gets_every_listener(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(LISTENER)
    response = await client.recv(LISTENER)
    assert set(names_in(response)) == {"external", "internal"}
    assert response.version_info.startswith(harness.world.instance + "-")


async def test_initial_wildcard_cds_request_gets_every_cluster(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER}


async def test_initial_wildcard_request_with_nothing_to_send_gets_an_empty_response(
    bare_harness: Harness,
) -> None:
    client = bare_harness.sotw()
    await client.request(CLUSTER)
    response = await client.recv(CLUSTER)  # the client's initial fetch ends with this
    assert names_in(response) == []


async def test_every_client_gets_the_same_bytes_for_the_same_resources(harness: Harness) -> None:
    one, two = harness.sotw(), harness.sotw()
    await one.request(CLUSTER)
    await two.request(CLUSTER)
    first, second = await one.recv(CLUSTER), await two.recv(CLUSTER)
    assert list(first.resources) == list(second.resources)
    assert first.version_info == second.version_info


async def test_one_clients_nack_does_not_hold_back_another(harness: Harness) -> None:
    rejecting, accepting = harness.sotw("rejecting"), harness.sotw("accepting")
    for client in (rejecting, accepting):
        await client.request(CLUSTER)
        await client.ack(await client.recv(CLUSTER))
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))
    await rejecting.nack(await rejecting.recv(CLUSTER))
    await accepting.ack(await accepting.recv(CLUSTER))

    harness.world.apply(synth.revision("hello-1", ready=True, h2c=True))

    for client in (rejecting, accepting):
        assert set(names_in(await client.recv(CLUSTER))) == {HELLO, OTHER}
    assert set(harness.plane.ads.nacks) == {("rejecting", CLUSTER)}


async def test_rds_request_by_name_gets_only_the_named_route_table(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(ROUTE, [EXTERNAL_HELLO])
    response = await client.recv(ROUTE)
    assert names_in(response) == [EXTERNAL_HELLO]
    await client.ack(response)
    # INTERNAL_HELLO exists but was not asked for: hello's next change brings only the one.
    await harness.barrier(client, ROUTE, "hello-1", expect=[EXTERNAL_HELLO])


async def test_eds_request_by_name_gets_only_the_named_endpoints(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO])
    response = await client.recv(ENDPOINT)
    assert names_in(response) == [HELLO]
    await client.ack(response)
    # OTHER exists but was not asked for: hello's next change brings only hello's.
    await harness.barrier(client, ENDPOINT, "hello-1", expect=[HELLO])


# -- ACK and NACK -------------------------------------------------------------------------


async def test_ack_gets_no_response_when_nothing_changed(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))

    # Asked for after the ACK and planned after CDS: had the ACK pushed, that came first.
    await client.request(ENDPOINT, [HELLO])
    await client.expect_next_is(ENDPOINT, [HELLO])


async def test_nack_is_recorded_per_node_and_type_and_the_rejected_version_is_not_resent(
    harness: Harness,
) -> None:
    client = harness.sotw("gateway-nack")
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))
    rejected = await client.recv(CLUSTER)

    await client.nack(rejected, "h2c not allowed here")

    await client.request(ENDPOINT, [HELLO])  # the rejected version must not come back first
    await client.expect_next_is(ENDPOINT, [HELLO])
    nack = harness.plane.ads.nacks[("gateway-nack", CLUSTER)]
    assert (nack.nonce, nack.message) == (rejected.nonce, "h2c not allowed here")


async def test_after_a_nack_the_next_different_version_is_sent(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    accepted = await client.recv(CLUSTER)
    await client.ack(accepted)
    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))
    await client.nack(await client.recv(CLUSTER))

    # Back to the content the client holds: still new to the server's view of it.
    harness.world.apply(synth.revision("other-1", ready=True, h2c=False))

    response = await client.recv(CLUSTER)
    assert response.version_info not in (accepted.version_info, "")
    assert messages_in(response) == messages_in(accepted)


async def test_nacked_routes_keep_the_clusters_the_accepted_routes_use(
    harness: Harness,
) -> None:
    """A NACKed RDS is not applied: the cluster the old table names must not be dropped."""
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))
    await client.request(ROUTE, HELLO_TABLES)
    routes = await client.recv(ROUTE)
    await client.ack(routes)

    harness.world.move_hello_to("hello-2")
    clusters = await client.recv(CLUSTER)
    assert HELLO in names_in(clusters)  # kept: the client's route tables still name it
    await client.ack(clusters)
    new_routes = await client.recv(ROUTE)
    await client.nack(new_routes)

    # HELLO stays while the accepted tables name it: the next full set still has it.
    await harness.barrier(client, CLUSTER, "other-1", expect=[HELLO, cluster("hello-2"), OTHER])


# -- stale nonces ---------------------------------------------------------------------------


async def test_request_with_a_stale_nonce_is_ignored_and_its_names_count_from_the_next_ack(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO])
    first = await client.recv(ENDPOINT)
    await client.ack(first)
    harness.world.give_pods("hello-1", "10.1.0.1")
    await client.recv(ENDPOINT)  # not acked: a request echoing the first nonce is stale

    await client.request(ENDPOINT, [HELLO, OTHER], nonce=first.nonce)

    # Stale: its new name is not acted on, so hello's next change comes alone.
    third = await harness.barrier(client, ENDPOINT, "hello-1", expect=[HELLO])
    await client.ack(third, [HELLO, OTHER])
    response = await client.recv(ENDPOINT)
    assert names_in(response) == [OTHER]


async def test_nack_with_a_stale_nonce_does_not_stop_the_latest_response_being_acked(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO])
    first = await client.recv(ENDPOINT)
    harness.world.give_pods("hello-1", "10.1.0.1")
    second = await client.recv(ENDPOINT)

    await client.nack(first)
    await client.ack(second)

    await client.request(ROUTE, [EXTERNAL_HELLO])  # planned after EDS: a resend would lead
    await client.expect_next_is(ROUTE, [EXTERNAL_HELLO])
    await harness.caught_up(client)
    stream = harness.stream_of(client)
    assert stream is not None
    assert stream.subs[ENDPOINT].acked_version == second.version_info


async def test_a_nonce_from_an_earlier_stream_does_not_make_requests_stale(
    harness: Harness,
) -> None:
    """A reconnecting client may echo its old stream's nonce until this stream answers."""
    client = harness.sotw()
    await client.request(ENDPOINT, [LATER], nonce="17")  # nothing to send: no answer
    await client.request(ENDPOINT, [LATER, HELLO], nonce="17")

    response = await client.recv(ENDPOINT)
    assert names_in(response) == [HELLO]


# -- names asked for before they exist ---------------------------------------------------


async def test_eds_name_asked_for_before_it_exists_is_sent_when_it_appears(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO, LATER])
    response = await client.recv(ENDPOINT)
    assert names_in(response) == [HELLO]
    await client.ack(response)

    harness.world.add_later_route()

    response = await client.recv(ENDPOINT)
    assert names_in(response) == [LATER]


async def test_cds_name_asked_for_before_it_exists_is_sent_when_it_appears(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, [LATER])
    response = await client.recv(CLUSTER)
    assert names_in(response) == []  # full-state type: an empty set says "does not exist"
    await client.ack(response)

    harness.world.add_later_route()

    response = await client.recv(CLUSTER)
    assert names_in(response) == [LATER]


async def test_a_name_requested_twice_comes_once(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO, HELLO, OTHER])
    response = await client.recv(ENDPOINT)
    assert sorted(names_in(response)) == [HELLO, OTHER]  # the client checks "never twice"


async def test_star_and_an_explicit_name_send_that_resource_once(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, ["*", HELLO])
    response = await client.recv(CLUSTER)
    assert sorted(names_in(response)) == [HELLO, OTHER]


# -- full state for LDS/CDS, only changes for RDS/EDS -----------------------------------------


async def test_cds_response_after_one_cluster_changed_carries_every_cluster(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))

    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))

    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER}


async def test_cds_response_after_the_last_cluster_went_is_empty(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(CLUSTER)
    await client.ack(await client.recv(CLUSTER))

    harness.world.delete(synth.route("hello", []), synth.route("other", []))

    response = await client.recv(CLUSTER)
    assert names_in(response) == []  # full state: what is absent is gone


async def test_cds_by_name_after_one_cluster_changed_carries_every_named_cluster(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(CLUSTER, [HELLO, OTHER])
    await client.ack(await client.recv(CLUSTER))

    harness.world.apply(synth.revision("other-1", ready=True, h2c=True))

    response = await client.recv(CLUSTER)
    assert set(names_in(response)) == {HELLO, OTHER}


async def test_lds_by_name_carries_every_named_listener(harness: Harness) -> None:
    client = harness.sotw()
    await client.request(LISTENER, ["internal", "external"])
    response = await client.recv(LISTENER)
    assert set(names_in(response)) == {"external", "internal"}


async def test_eds_response_after_one_endpoint_set_changed_carries_only_that_one(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(ENDPOINT, [HELLO, OTHER])
    await client.ack(await client.recv(ENDPOINT))

    harness.world.give_pods("hello-1", "10.1.0.1")

    response = await client.recv(ENDPOINT)
    assert names_in(response) == [HELLO]


async def test_rds_response_after_one_route_changed_carries_only_its_tables(
    harness: Harness,
) -> None:
    client = harness.sotw()
    await client.request(ROUTE, [*HELLO_TABLES, *tables("other")])
    await client.ack(await client.recv(ROUTE))

    harness.world.move_hello_to("hello-2")

    response = await client.recv(ROUTE)
    assert sorted(names_in(response)) == HELLO_TABLES  # not other's, which did not change


# -- node ----------------------------------------------------------------------------------


async def test_node_from_the_first_request_identifies_the_stream_for_later_ones(
    harness: Harness,
) -> None:
    client = harness.sotw("gateway-7")
    await client.request(CLUSTER)  # carries the node
    await client.ack(await client.recv(CLUSTER))
    await client.request(LISTENER)  # does not

    await client.recv(LISTENER)
    (stream,) = harness.plane.ads.streams.values()
    assert stream.status.node_id == "gateway-7"
