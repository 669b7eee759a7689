"""A large batch after the first load is applied in steps, published once; a lone
edit on an idle pipeline is applied at once."""

from __future__ import annotations

import asyncio

import pytest

from knative_xds import pipeline as pipeline_module
from knative_xds import synth
from knative_xds.resources import ROUTE
from tests.protocol.conftest import many_routes, new_plane, raw_objects

ROUTES = 60


async def test_a_relist_is_applied_in_steps_published_once_and_an_edit_meanwhile_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small sizes so that a 60-Route relist is "large" and takes several steps.
    monkeypatch.setattr(pipeline_module, "BULK_OBJECTS", 50)
    monkeypatch.setattr(pipeline_module, "OBJECTS_PER_STEP", 10)
    monkeypatch.setattr(pipeline_module, "ROUTES_PER_STEP", 10)
    plane = new_plane()
    pipeline = plane.pipeline
    await pipeline.load(raw_objects(*many_routes(ROUTES)))

    published: list[frozenset[str]] = []  # per snapshot: its route tables
    publish = plane.cache.apply

    def recording(*args, **kwargs):
        snapshot = publish(*args, **kwargs)
        if snapshot is not None:
            published.append(frozenset(snapshot.of(ROUTE)))
        return snapshot

    plane.cache.apply = recording  # type: ignore[method-assign]
    steps: list[int] = []  # translation steps done when the loop got to run a callback
    translate = plane.translator.translate_ingresses

    def counting(*args, **kwargs):
        steps.append(len(steps) + 1)
        return translate(*args, **kwargs)

    plane.translator.translate_ingresses = counting  # type: ignore[method-assign]
    seen_at: list[int] = []
    late = synth.route("late", [synth.target("r-0", 100)])

    def meanwhile() -> None:
        # Runs only when the pipeline lets the loop in: before the relist ends, if stepped.
        seen_at.append(len(steps))
        pipeline.submit(raw_objects(late))

    relist = [
        synth.route(f"route-{i}", [synth.target(f"r-{i}", 100)], cluster_local=True)
        for i in range(ROUTES)
    ]
    runner = asyncio.create_task(pipeline.run())
    try:
        pipeline.submit(raw_objects(*relist))
        asyncio.get_running_loop().call_soon(meanwhile)
        async with asyncio.timeout(10):
            while len(published) < 2:
                changed = asyncio.Event()
                plane.cache.watch(changed)
                await changed.wait()
    finally:
        runner.cancel()

    assert len(steps) >= ROUTES // 10  # translated in several steps
    assert seen_at and seen_at[0] < len(steps)  # the loop ran before the relist was done
    relisted, following = published[0], published[1]
    # One snapshot for the whole relist: every Route cluster-local (no external table).
    assert not any(t.startswith("external/default/route-") for t in relisted)
    assert "internal/default/late" not in relisted
    assert "internal/default/late" in following


async def test_a_lone_edit_on_an_idle_pipeline_is_applied_before_a_later_one_is_seen() -> None:
    plane = new_plane()
    pipeline = plane.pipeline
    await pipeline.load(raw_objects(*many_routes(2)))
    batches: list[frozenset] = []
    applied = asyncio.Event()

    def on_applied(a) -> None:
        batches.append(frozenset(k.name for k in a.update.changed_ingresses))
        applied.set()

    pipeline.on_applied.append(on_applied)
    runner = asyncio.create_task(pipeline.run())
    try:
        # A first edit, applied: the pipeline is idle again, waiting for changes.
        pipeline.submit(raw_objects(synth.route("zero", [synth.target("r-0", 100)])))
        async with asyncio.timeout(10):
            await applied.wait()
        batches.clear()
        loop = asyncio.get_running_loop()
        pipeline.submit(raw_objects(synth.route("one", [synth.target("r-0", 100)])))
        # Submitted on the loop's very next turn: a window after `one` would take it in too.
        loop.call_soon(pipeline.submit, raw_objects(synth.route("two", [synth.target("r-1", 100)])))
        async with asyncio.timeout(10):
            while len(set().union(*batches)) < 2:
                applied.clear()
                await applied.wait()
    finally:
        runner.cancel()
    assert batches == [frozenset({"one"}), frozenset({"two"})]


def test_resolving_in_steps_pauses_and_keeps_the_old_state_until_it_returns() -> None:
    plane = new_plane()
    resolver = plane.resolver
    resolver.apply(raw_objects(*many_routes(ROUTES)))
    before = resolver.state
    resolver.stage(
        raw_objects(
            *(
                synth.route(f"route-{i}", [synth.target(f"r-{i}", 100)], cluster_local=True)
                for i in range(ROUTES)
            )
        )
    )
    steps = resolver.resolve_in_steps(per_step=10)
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            update = done.value
            break
        pauses += 1
        assert resolver.state is before  # nothing half-resolved is visible meanwhile
    assert pauses == ROUTES // 10
    assert len(update.changed_ingresses) == ROUTES
    rules = [r for i in update.state.ingresses.values() for r in i.rules]
    assert rules and all(r.visibility.name == "CLUSTER_LOCAL" for r in rules)
