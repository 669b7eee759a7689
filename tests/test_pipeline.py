"""The pipeline: a staged first load, and changes that arrive while it runs."""

from __future__ import annotations

import asyncio

from knative_xds import synth
from knative_xds.app import ControlPlane, Settings
from knative_xds.model import ObjectKey
from knative_xds.pipeline import ROUTES_PER_STEP
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from tests.protocol.conftest import many_routes, new_plane, raw_objects


async def test_a_change_submitted_during_the_first_load_waits_for_it_and_is_applied() -> None:
    plane = new_plane()
    pipeline = plane.pipeline
    published: list[tuple[frozenset[str], int]] = []  # per snapshot: loaded types, tables
    first_published = asyncio.Event()
    publish = plane.cache.apply

    def recording(*args, **kwargs):
        snapshot = publish(*args, **kwargs)
        if snapshot is not None:
            published.append((snapshot.loaded, len(snapshot.of(ROUTE))))
            first_published.set()
        return snapshot

    plane.cache.apply = recording  # type: ignore[method-assign]
    runner = asyncio.create_task(pipeline.run())
    try:
        # Several steps' worth of Routes, so the load yields to the loop in between.
        load = asyncio.create_task(pipeline.load(raw_objects(*many_routes(10 * ROUTES_PER_STEP))))
        async with asyncio.timeout(5):
            await first_published.wait()
        # The load has published its clusters and is building the tables: submit in between.
        assert published == [({CLUSTER, ENDPOINT, SECRET}, 0)] and not load.done()
        moved = synth.route("route-0", [synth.target("r-0-b", 100)])
        pipeline.submit(raw_objects(synth.revision("r-0-b", ready=True), moved))
        await load
        async with asyncio.timeout(5):
            while "default/r-0-b" not in plane.cache.current().of(CLUSTER):
                await asyncio.sleep(0.01)
    finally:
        runner.cancel()

    state = plane.resolver.resolve().state
    assert state.ingresses[ObjectKey("default", "route-0")].backends[0].name == "default/r-0-b"
    # Clusters first, then every table at once, then the change: never a partial set.
    tables = 2 * 10 * ROUTES_PER_STEP  # one per listener per Route
    assert published[0] == ({CLUSTER, ENDPOINT, SECRET}, 0)
    assert published[1:] and all(p == (frozenset(PUSH_ORDER), tables) for p in published[1:])


async def test_a_first_load_with_no_ingress_still_gives_a_cluster_s_gateway_its_listeners():
    # A fresh install has no KIngress yet: the gateway's readiness probe is its
    # listener port, so it must get listeners before the first KIngress arrives.
    plane = ControlPlane(Settings(hold_empty_start=False))
    applied = await plane.pipeline.load({})
    assert applied.snapshot is not None
    assert {"external", "internal"} <= set(applied.snapshot.of(LISTENER))
