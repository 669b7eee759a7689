"""Planning costs what changed: a one-Route edit takes the same few steps at any size.

For each resource it considers sending a client, the planner evaluates one name
(`plan._evaluate`). Counting those calls over a whole Envoy-like edit, with
hundreds and then thousands of Routes loaded, shows the work follows the edit
and not the size of the configuration. It counts work, not time, so a slow
machine cannot make it flaky.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE, short
from knative_xds.server import plan

from .conftest import Harness, cluster, many_routes, start_harness
from .envoy_like import Gateway, removed
from .xds_client import DeltaClient, names_in

# Evaluations one edit may cost: a few names move (the Route's two tables, its old and new
# cluster and endpoint set, its scopes), and those waiting are looked at again on each of
# the few requests that may let them move: 23 for a move (2 of them the closing barrier's
# tables), 13 for an add when this was written.
FEW = 30


def count_evaluations(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """From now on, count the planner's evaluations per type."""
    counts: Counter[str] = Counter()
    evaluator = plan._evaluator

    def counting(type_url: str, ctx: Any) -> Any:
        evaluate = evaluator(type_url, ctx)

        def counted(name: str) -> Any:
            counts[short(type_url)] += 1
            return evaluate(name)

        return counted

    monkeypatch.setattr(plan, "_evaluator", counting)
    return counts


async def move_one_route(harness: Harness, gateway: Gateway) -> None:
    """Move route-0 to a new revision and follow it through as Envoy does, until quiet."""
    old, new = cluster("r-0"), cluster("r-0-b")
    harness.world.apply(
        synth.revision("r-0-b", ready=True), synth.route("route-0", [synth.target("r-0-b", 100)])
    )
    clusters = await gateway.recv(CLUSTER)
    await gateway.ask(ENDPOINT, [new])
    await gateway.ack(clusters)
    await gateway.ack(await gateway.recv(ENDPOINT))
    tables = await gateway.recv(ROUTE)
    assert sorted(names_in(tables)) == ["external/default/route-0", "internal/default/route-0"]
    await gateway.ack(tables)
    clusters = await gateway.recv(CLUSTER)  # the old cluster goes once no accepted table names it
    if isinstance(gateway.client, DeltaClient):
        assert removed(clusters) == [old]
        endpoints = await gateway.recv(ENDPOINT)
        assert removed(endpoints) == [old]
        await gateway.ack(endpoints)
    else:
        assert old not in names_in(clusters)
    await gateway.drop(ENDPOINT, [old])
    await gateway.ack(clusters)
    # The move is through: another Route's change comes next (RDS is planned last), and
    # the planning the last ACK caused has been done, so counted.
    await harness.barrier(
        gateway.client, ROUTE, "r-1", ["external/default/route-1", "internal/default/route-1"]
    )


async def add_one_route(harness: Harness, gateway: Gateway) -> None:
    """Add a Route on a new revision and follow it through as Envoy does, until quiet."""
    harness.world.apply(
        synth.revision("r-new", ready=True), synth.route("route-new", [synth.target("r-new", 100)])
    )
    taken = await gateway.settle()
    tables = [names_in(r) for r in taken if r.type_url == ROUTE]
    assert [sorted(t) for t in tables] == [
        ["external/default/route-new", "internal/default/route-new"]
    ]


EDITS = {"move": move_one_route, "add": add_one_route}


async def evaluations_per_edit(
    routes: int, flavour: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Counter[str]]:
    """With `routes` Routes loaded and a gateway in step, each edit in turn and what it cost."""
    harness = await start_harness()
    counts = {}
    try:
        harness.world.apply(*many_routes(routes))
        gateway = Gateway(
            harness.delta() if flavour == "delta" else harness.sotw(), harness.plane.ads
        )
        await gateway.converge()
        for name, edit in EDITS.items():
            await harness.caught_up(gateway.client)  # its last ACK is not this edit's work
            counts[name] = count_evaluations(monkeypatch)
            await edit(harness, gateway)
            monkeypatch.undo()
    finally:
        await harness.close()
    assert harness.violations() == []
    return counts


async def test_a_one_route_edit_evaluates_a_handful_of_names_at_any_size(
    flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = await evaluations_per_edit(200, flavour, monkeypatch)
    large = await evaluations_per_edit(2000, flavour, monkeypatch)

    for edit in EDITS:
        few, many = small[edit], large[edit]
        assert few.total() < FEW, f"{edit}, 200 routes: {dict(few)}"
        assert many.total() < FEW, f"{edit}, 2,000 routes: {dict(many)}"
        # Not just small: the same work at either size (a wake more or less may recheck some).
        assert abs(many.total() - few.total()) <= 4, f"{edit}: {dict(few)} vs {dict(many)}"
