"""Concurrent requests and the split checks the percentage cases share."""

from __future__ import annotations

import asyncio
from collections import Counter

from .client import GatewayClient

# Go's errgroup limit.
CONCURRENCY = 8


async def tally(client: GatewayClient, url: str, header: str, total: int) -> Counter[str]:
    """`total` runtime requests, 8 at a time; counts of `header`'s value. Every one must
    succeed (Go: "failed to request")."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> str:
        async with gate:
            return (await client.runtime_request(url)).header(header)

    return Counter(await asyncio.gather(*(one() for _ in range(total))))


def doubling_weights(count: int = 10) -> list[int]:
    """percentage.go's weights: 1, 2, 4, ... until the next would pass 100, the
    remainder next, then zeros (1, 2, 4, 8, 16, 32, 37, 0, 0, 0)."""
    weights, percent, total = [], 1, 0
    for _ in range(count):
        weights.append(percent)
        total += percent
        percent *= 2
        if total + percent > 100:
            percent = 100 - total
    return weights


def split_errors(
    seen: Counter[str], weights: dict[str, int], total: int, margin: float
) -> list[str]:
    """percentage.go's check: each target within `margin` percentage points of its
    weight; a 0 % target gets nothing at all."""
    errors = []
    for name, want in weights.items():
        got = 100.0 * seen.get(name, 0) / total
        if want == 0 and got > 0:
            errors.append(f"Target {name!r} received traffic, wanted none (0% target).")
        elif abs(got - want) > margin:
            errors.append(f"Target {name!r} received {got:.1f}%, wanted {want} +/- {margin}")
    unknown = set(seen) - set(weights)
    if unknown:
        errors.append(f"requests answered by no target of the split: {sorted(unknown)}")
    return errors
