"""An event-loop stall probe for the benchmarks: off unless KNATIVE_XDS_LOOP_PROBE names a file.

A task sleeps `INTERVAL_S` in a loop; whatever it wakes up later than asked is
time the loop spent on something else without yielding (a synchronous batch, a
large serialisation). Every `REPORT_EVERY_S` it appends one JSON line to the file:

    {"end": wall, "max_ms": float, "max_at": wall, "turns": int}

`max_ms` is the longest overshoot seen in that period, `max_at` the wall time at
which that late turn began waiting (the stall lies within [max_at, max_at +
INTERVAL_S + max_ms], so a reader can tell whether it fell inside its own window)
and `turns` how many sleeps ended in the period. A line is flushed at once, so a
process ended by a signal loses at most the last period. The probe costs a
wake-up every few milliseconds, which is why it is for measuring only.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

ENV = "KNATIVE_XDS_LOOP_PROBE"
INTERVAL_S = 0.005
REPORT_EVERY_S = 0.1

_running: set[asyncio.Task] = set()  # holds the task while it runs (the loop keeps weak refs)


def start_from_env() -> asyncio.Task | None:
    """Start the probe on the running loop if the environment asks for it."""
    path = os.environ.get(ENV)
    if not path:
        return None
    task = asyncio.get_running_loop().create_task(probe(Path(path)), name="loop probe")
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def probe(path: Path, interval: float = INTERVAL_S, every: float = REPORT_EVERY_S) -> None:
    with path.open("a", encoding="utf-8") as out:
        while True:
            worst, worst_at, turns = 0.0, time.time(), 0
            period_end = time.monotonic() + every
            while time.monotonic() < period_end:
                asked_at, wall = time.monotonic(), time.time()
                await asyncio.sleep(interval)
                late = time.monotonic() - asked_at - interval
                turns += 1
                if late > worst:
                    worst, worst_at = late, wall
            line = {
                "end": time.time(),
                "max_ms": round(worst * 1000, 2),
                "max_at": worst_at,
                "turns": turns,
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
