"""timeout (timeout.go): no route timeout, before or after the response headers.

Go waits 10 s, which is shorter than Envoy's 15 s default route timeout, so a
gateway that kept the default would pass it; here each delay is 16 s. Go only
checks the status (sent before the delay after the headers); here the whole
body must arrive too, so a stream cut after the headers fails."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .env import DOMAIN, Conformance, rule, split

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DELAY_MS = 16_000  # > Envoy's 15 s default route timeout
ENVOY_DEFAULT_ROUTE_TIMEOUT_MS = 15_000


@pytest.mark.timeout(90)
async def test_timeout(env: Conformance) -> None:
    assert DELAY_MS > ENVOY_DEFAULT_ROUTE_TIMEOUT_MS
    name, port = await env.create_timeout_service("timeout")
    host = f"{name}.{DOMAIN}"
    spec = {"rules": [rule([host], [{"splits": [split(name, port)]}])]}
    _, client = await env.create_ingress_ready("timeout", spec)
    cases = {
        "no delays is OK": (0, 0),
        "large delay before headers is ok": (DELAY_MS, 0),
        "large delay after headers is ok": (0, DELAY_MS),
    }

    async def check(initial: int, delay: int) -> str:
        url = f"http://{host}?initialTimeout={initial}&timeout={delay}"
        try:
            reply = await client.get(url, timeout=DELAY_MS / 1000 + 30)
        except aiohttp.ClientError as e:
            return f"the response did not complete: {e!r}"
        if reply.status != 200:
            return f"Unexpected status code: {reply.status}, wanted 200\n{reply.dump()}"
        if reply.body != f"Slept for {delay} milliseconds".encode():
            return f"body {reply.body!r}: the response did not complete"
        return ""

    results = await asyncio.gather(*(check(*delays) for delays in cases.values()))
    failures = {case: why for case, why in zip(cases, results, strict=True) if why}
    assert not failures, failures
