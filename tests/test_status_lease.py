"""One status writer among replicas: the Lease, who holds it, and what happens when it goes.

Two electors (two replicas, each with its own credentials) share the fake API
server; whose writes arrive is told by the bearer token each request carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from knative_xds.server.callbacks import StreamStatus
from knative_xds.sources.kube_http import HttpApi
from knative_xds.status.lease import Elector, LeaseSettings
from knative_xds.status.readiness import ReadinessTracker
from knative_xds.status.writer import StatusWriter
from tests.fake_kube_api import FakeApiServer
from tests.test_status import Plane
from tests.test_status_kube import (
    DEADLINE,
    a_kingress,
    api,
    connected,
    gw,
    patches,
    plane,
    running,
    served,
    server,
    tracker,
    until,
    writer,
)

# The fixtures above are shared with test_status_kube.py.
__all__ = ["api", "gw", "plane", "server", "tracker"]

LEASE = LeaseSettings(duration=1, renew_every=0.2, retry_every=0.1)


def holder(server: FakeApiServer) -> str:
    try:
        lease = server.stored(
            "coordination.k8s.io/v1", "Lease", "knative-xds", "knative-xds-status"
        )
    except KeyError:
        return ""
    return lease["spec"]["holderIdentity"]


def replica(api: HttpApi, tracker: ReadinessTracker, name: str) -> tuple[Elector, StatusWriter]:
    elector = Elector(api, dataclasses.replace(LEASE, identity=name))
    return elector, writer(api, tracker, may_write=elector.leading)


def writers_of(server: FakeApiServer, verb: str = "patch") -> set[str]:
    return {s.authorization for s in server.requests(verb)}


async def test_only_the_lease_holder_writes_and_another_takes_over_when_it_dies(
    server: FakeApiServer, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    server.put(a_kingress("hello"))
    served(plane, gw, name="hello")
    async with connected(server, "a") as api_a, connected(server, "b") as api_b:
        (elector_a, writer_a), (elector_b, writer_b) = (
            replica(api_a, tracker, "pod-a"),
            replica(api_b, tracker, "pod-b"),
        )
        task_b = asyncio.create_task(elector_b.run(writer_b.run, release_on_exit=False))
        await until(server, lambda: holder(server) == "pod-b")
        task_a = asyncio.create_task(elector_a.run(writer_a.run, release_on_exit=False))
        try:
            await until(server, lambda: patches(server))
            await until(server, lambda: len(server.requests("get", "/leases/")) >= 5)
            server.put(a_kingress("other"))
            served(plane, gw, name="other")
            await until(server, lambda: len(patches(server)) == 2)
            assert writers_of(server) == {"Bearer b"}
            assert writers_of(server, "list") == {"Bearer b"}
            assert not elector_a.leading()

            task_b.cancel()  # dies holding the lease: nobody gives it up
            with contextlib.suppress(asyncio.CancelledError):
                await task_b
            died = time.time()
            lease = server.stored(
                "coordination.k8s.io/v1", "Lease", "knative-xds", "knative-xds-status"
            )
            await until(server, lambda: holder(server) == "pod-a", seconds=LEASE.duration + 2)
            took = time.time() - died
            assert took <= LEASE.duration + LEASE.retry_every + 0.5
            taken = server.stored(
                "coordination.k8s.io/v1", "Lease", "knative-xds", "knative-xds-status"
            )
            assert taken["spec"]["leaseTransitions"] == lease["spec"]["leaseTransitions"] + 1

            server.put(a_kingress("third"))
            served(plane, gw, name="third")
            await until(server, lambda: patches(server, "third"))
            assert server.requests("patch", "/third/")[0].authorization == "Bearer a"
        finally:
            task_a.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_a


async def test_a_holder_whose_lease_is_taken_stops_writing_at_once(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane
) -> None:
    stopped = asyncio.Event()
    elector, status_writer = replica(api, tracker, "pod-a")

    async def lead() -> None:
        try:
            await status_writer.run()
        finally:
            stopped.set()

    async with running(lambda: elector.run(lead)):
        await until(server, lambda: holder(server) == "pod-a")
        lease = server.stored(
            "coordination.k8s.io/v1", "Lease", "knative-xds", "knative-xds-status"
        )
        taken = {"holderIdentity": "pod-z", "leaseDurationSeconds": 3600}
        intruder = {**lease, "spec": {**lease["spec"], **taken}}
        server.put(intruder)  # another replica's write: the next renewal gets 409
        async with asyncio.timeout(LEASE.renew_every + 1):
            await stopped.wait()
        assert not elector.leading()
        assert holder(server) == "pod-z"


async def test_a_holder_that_cannot_renew_stops_before_the_lease_expires(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker
) -> None:
    elector = Elector(api, dataclasses.replace(LEASE, identity="pod-a"))
    lost = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            lost.set()

    async with running(lambda: elector.run(lead)):
        await until(server, lambda: holder(server) == "pod-a")
        server.fail("replace", "/leases/", 503, times=1000)
        renewed = time.time()
        async with asyncio.timeout(LEASE.duration + 1):
            await lost.wait()
        assert time.time() - renewed < LEASE.duration
        assert not elector.leading()


async def test_a_lease_is_created_when_absent_and_released_on_shutdown(
    server: FakeApiServer, api: HttpApi
) -> None:
    elector = Elector(api, dataclasses.replace(LEASE, identity="pod-a"))
    leading = asyncio.Event()

    async def lead() -> None:
        leading.set()
        await asyncio.Event().wait()

    async with running(lambda: elector.run(lead)):
        async with asyncio.timeout(DEADLINE):
            await leading.wait()
        (created,) = server.requests("create")
        assert created.path == "/apis/coordination.k8s.io/v1/namespaces/knative-xds/leases"
        spec = created.body["spec"]
        assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("pod-a", 1)
    lease = server.stored("coordination.k8s.io/v1", "Lease", "knative-xds", "knative-xds-status")
    assert lease["spec"]["holderIdentity"] == ""
