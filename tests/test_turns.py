"""Large plans are taken in turns with the event loop let in between; small ones never wait.

Ten streams woken by one relist each plan a push of 10,000 route tables in the
same turn of the loop; without turns, a timer or a health probe waits for all ten.
"""

from __future__ import annotations

import asyncio

from knative_xds.server.turns import Turns


async def _two_large_plans_and_a_callback(turns: Turns) -> list[str]:
    order: list[str] = []
    loop = asyncio.get_running_loop()

    async def stream(name: str) -> None:
        async with turns.turn(10_000):  # a relist's route tables
            order.append(name)
            if name == "first":
                # Work the loop must get to between the two plans (a read, a timer).
                loop.call_soon(order.append, "loop")

    # Both woken in the same turn of the loop, as streams are by one new snapshot.
    await asyncio.gather(stream("first"), stream("second"))
    return order


async def test_the_loop_runs_between_two_large_plans() -> None:
    assert await _two_large_plans_and_a_callback(Turns()) == ["first", "loop", "second"]


async def test_without_turns_the_second_plan_would_run_before_the_loop() -> None:
    # The same two plans, both below the threshold: this is what turns prevent.
    order = await _two_large_plans_and_a_callback(Turns(large=10**9))
    assert order == ["first", "second", "loop"]


async def test_a_small_plan_never_waits_for_a_large_one() -> None:
    turns = Turns(large=100)
    order: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def large() -> None:
        async with turns.turn(500):
            holding.set()
            await release.wait()
            order.append("large")

    task = asyncio.create_task(large())
    await holding.wait()
    async with turns.turn(5):  # an edit's push while a relist's is being planned
        order.append("small")
    release.set()
    await task
    assert order == ["small", "large"]
