"""update and ingressclass (update.go, class.go)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp
import pytest

from .client import GatewayClient
from .env import CLASS_ANNOTATION, DOMAIN, Conformance, object_name, rule, split

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WHO = "Who-Are-You"
ROLLOUTS = 10  # Go's count for each of the two phases


def time_query() -> str:
    return f"?time={time.time_ns()}"


@dataclass
class Prober:
    """Go's checkOK: requests one after another until stopped; every one must be a 200."""

    client: GatewayClient
    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    first_ok: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                await self.client.runtime_request(self.url + time_query())
                self.ok += 1
                self.first_ok.set()
            except (AssertionError, OSError, aiohttp.ClientError) as e:
                self.failures.append(f"after {self.ok} OK: {e!r}")
                await asyncio.sleep(0.01)  # a failing gateway answers at once: no busy loop


async def test_update(env: Conformance) -> None:
    """Over 20 updates (sentinel headers, then a fresh Service each time, the previous one
    torn down once the next is Ready) no request fails, and each update is served as
    soon as it is Ready."""
    first, first_port = await env.create_runtime_service("update")
    host = f"{object_name('update')}.{DOMAIN}"

    def spec(service: str, port: int, sentinel: str) -> dict:
        target = split(service, port, appendHeaders={WHO: sentinel})
        return {"rules": [rule([host], [{"splits": [target]}])]}

    ingress, client = await env.create_ingress_ready("update", spec(first, first_port, first))
    name = ingress["metadata"]["name"]
    prober = Prober(client, f"http://{host}")
    task = asyncio.create_task(prober.run())
    try:
        async with asyncio.timeout(10):  # Go sleeps a second for the prober to start
            await prober.first_ok.wait()

        async def roll_out(service: str, port: int) -> None:
            sentinel = object_name("update")
            await env.update_ingress_ready(name, spec(service, port, sentinel))
            info = await client.runtime_request(f"http://{host}{time_query()}")
            assert info.header(WHO) == sentinel, f"Header[{WHO!r}] = {info.header(WHO)!r}"

        for _ in range(ROLLOUTS):  # sentinel changes only
            await roll_out(first, first_port)
        previous = first
        for _ in range(ROLLOUTS):  # and a fresh Service each time
            service, port = await env.create_runtime_service("update")
            await roll_out(service, port)
            await env.delete_service(previous)
            previous = service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not prober.failures, f"{len(prober.failures)} probes failed: {prober.failures[:5]}"
    assert prober.ok > 2 * ROLLOUTS, f"only {prober.ok} probes ran over {2 * ROLLOUTS} updates"


async def test_ingressclass(env: Conformance) -> None:
    """KIngresses with no, an empty or another class are left untouched and unserved.

    Go waits two seconds and then finds each object as it created it. Here the sign
    that the control plane has had its chance is an Ingress of our class, created
    after them, becoming Ready and served; then each of the others must be exactly
    as created (no status, no other change) and its host unserved."""
    name, port = await env.create_runtime_service("ingressclass")
    host = f"{name}.{DOMAIN}"
    spec = {"rules": [rule([host], [{"splits": [split(name, port)]}])]}
    annotations = {
        "nil": {},
        "omitted": {},
        "incorrect": {CLASS_ANNOTATION: "incorrect"},
        "empty": {CLASS_ANNOTATION: ""},
    }
    created = {
        case: env.create_ingress(f"ingressclass/{case}", spec, annotations=a)
        for case, a in annotations.items()
    }
    ours_host = f"{object_name('ingressclass')}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "ingressclass", {"rules": [rule([ours_host], [{"splits": [split(name, port)]}])]}
    )
    await client.runtime_request(f"http://{ours_host}")
    for case, original in created.items():
        name = original["metadata"]["name"]
        now = env.get_ingress(name)
        assert now == original, f"{case}: unexpected update: {original} → {now}"
        writes = [s for verb in ("patch", "replace") for s in env.api.requests(verb, f"/{name}")]
        assert not writes, f"{case}: written: {writes}"
    await client.expect_status(f"http://{host}", {404})
