"""Large plans taken in turns, with the event loop let in after each.

One relist of 10,000 route tables wakes every stream in the same turn of the
event loop, and each plans and encodes its ~100 ms push before the loop gets
back: ten gateways stall every timer, read and health probe for a second. A
plan that may touch many names takes its turn instead; the loop runs between
two of them, so the longest stall is one plan, not the sum of all. Small plans
(an edit) never wait: they cost a turn of the loop nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# Names a plan may touch before it takes a turn: a few ms of work below it.
LARGE_PLAN = 1000


class Turns:
    def __init__(self, large: int = LARGE_PLAN) -> None:
        self.large = large
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def turn(self, names: int) -> AsyncIterator[None]:
        """Run the body now when it touches fewer than `large` names, else in turn."""
        if names < self.large:
            yield
            return
        async with self._lock:
            yield
            # Still holding the turn: the loop serves timers and reads before the next.
            await asyncio.sleep(0)
