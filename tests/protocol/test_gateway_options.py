"""ConfigMap `config-xds` costs what it changes: an access-log switch re-sends the listeners
and nothing else, on a stream already in step (SotW and Delta)."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2

from knative_xds import synth
from knative_xds.resources import LISTENER, ROUTE

from .conftest import Harness, raw_objects, tables
from .envoy_like import Gateway
from .xds_client import messages_in, names_in


async def test_an_access_log_switch_sends_the_listeners_then_nothing_else(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()

    harness.world.apply(synth.config_map("config-xds", {"enable-service-access-logging": "true"}))

    listeners = await gateway.recv()
    assert listeners.type_url == LISTENER
    assert sorted(names_in(listeners)) == ["external", "internal"]
    for message in messages_in(listeners).values():
        assert isinstance(message, listener_pb2.Listener)
        assert b"envoy.access_loggers.stdout" in message.SerializeToString()
    await gateway.ack(listeners)
    # No route table, scope or cluster followed: the next response is a route-table
    # change made only now, naming only its own tables.
    await harness.barrier(gateway.client, ROUTE, "other-1", tables("other"))


async def test_a_bad_config_xds_edit_sends_nothing_and_is_reported(
    harness: Harness, gateway: Gateway
) -> None:
    await gateway.converge()

    bad = synth.config_map("config-xds", {"trusted-hops": "several"})
    applied = harness.plane.pipeline.apply(raw_objects(bad))

    assert applied.snapshot is None and applied.resources_changed == 0
    [problem] = harness.plane.pipeline.problems()
    assert (problem.key, problem.field) == ("knative-serving/config-xds", "data.trusted-hops")
    await harness.barrier(gateway.client, ROUTE, "other-1", tables("other"))
