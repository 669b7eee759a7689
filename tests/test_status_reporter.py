"""The status reporter end to end: KIngress → pipeline → ADS streams' ACKs → status on the API.

A real control plane serves Envoy-like gRPC clients on loopback; the reporter
watches its streams and snapshots and writes to the fake API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest

from knative_xds.app import ControlPlane, Settings
from knative_xds.model import RawObject
from knative_xds.model.types import ObjectKey, State
from knative_xds.resources import CLUSTER, LISTENER, SCOPED_ROUTE
from knative_xds.sources.kube_http import HttpApi
from knative_xds.status.conditions import is_ready
from knative_xds.status.reporter import ReporterSettings, StatusReporter
from knative_xds.translate import GatewayConfig
from tests.fake_kube_api import FakeApiServer
from tests.protocol.envoy_like import Gateway
from tests.protocol.xds_client import SotwClient
from tests.test_status_kube import (
    FAST,
    NETWORKING,
    a_kingress,
    connected,
    patches,
    ready_of,
    until,
)
from tests.test_status_lease import LEASE


def a_service(name: str) -> dict:
    port = {"name": "http", "port": 80, "targetPort": 8080}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "ports": [port]},
    }


def kingress(generation: int, *, host: str = "hello.example.com", service: str = "hello") -> dict:
    obj = a_kingress("hello", host=host)
    obj["metadata"]["generation"] = generation
    obj["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["serviceName"] = service
    return obj


class Plane:
    """A control plane fed straight through its pipeline, keeping the State it resolved."""

    def __init__(self) -> None:
        self.plane = ControlPlane(Settings(gateway=GatewayConfig("127.0.0.1", 18080, 18081)))
        self.state = State()

    def apply(self, *docs: Mapping[str, Any]) -> None:
        changes = {}
        for doc in docs:
            raw = RawObject.from_dict(copy.deepcopy(dict(doc)), "test")
            changes[raw.ident] = raw
        self.state = self.plane.pipeline.apply(changes).update.state


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def new_reporter(api: HttpApi, plane: Plane) -> StatusReporter:
    return StatusReporter(
        ads=plane.plane.ads,
        cache=plane.plane.cache,
        translator=plane.plane.translator,
        state=lambda: plane.state,
        problems=plane.plane.problems,
        api=api,
        settings=ReporterSettings(
            lease=dataclasses.replace(LEASE, identity="pod-a"), writer=FAST, problem_poll=0.05
        ),
    )


@contextlib.asynccontextmanager
async def reporting(server: FakeApiServer, plane: Plane) -> AsyncIterator[StatusReporter]:
    async with connected(server) as api:
        reporter = new_reporter(api, plane)
        task = asyncio.create_task(reporter.run())
        try:
            yield reporter
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def channel(plane: Plane) -> AsyncIterator[grpc.aio.Channel]:
    port = await plane.plane.start_xds("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await plane.plane.stop(grace=0)


@pytest.fixture
def plane() -> Plane:
    return Plane()


async def test_a_kingress_is_ready_once_every_connected_gateway_accepted_its_generation(
    server: FakeApiServer, plane: Plane, channel: grpc.aio.Channel
) -> None:
    server.put(a_kingress("hello"))
    plane.apply(a_service("hello"), a_service("hello-v2"), kingress(1))
    async with reporting(server, plane) as reporter:
        await until(server, lambda: patches(server))
        assert ready_of(patches(server)[-1]) == (1, "Unknown", "NoGatewayConnected")

        first = Gateway(SotwClient(channel, "gateway-1"), plane.plane.ads)
        await first.converge()
        await until(server, lambda: ready_of(patches(server)[-1]) == (1, "True", ""))

        # A second gateway connects and asks only for clusters: it holds no route table.
        second = Gateway(SotwClient(channel, "gateway-2"), plane.plane.ads)
        await second.subscribe_wildcard(CLUSTER)
        await second.follow_clusters(await second.recv(CLUSTER))
        server.put(kingress(2, host="v2.example.com", service="hello-v2"))
        plane.apply(kingress(2, host="v2.example.com", service="hello-v2"))
        await until(server, lambda: ready_of(patches(server)[-1])[0] == 2)
        await first.settle()
        # The first gateway has generation 2; the second does not: still not ready.
        (row,) = reporter.tracker.rows()
        assert (row.generation, row.ready, row.waiting_for) == (2, False, 1)
        assert ready_of(patches(server)[-1]) == (2, "Unknown", "WaitingForGateways")

        await second.settle()  # endpoints, then listeners, scopes and route tables
        await second.subscribe_wildcard(LISTENER)
        await second.settle()
        await second.subscribe_wildcard(SCOPED_ROUTE)
        await second.settle()
        await until(server, lambda: ready_of(patches(server)[-1]) == (2, "True", ""))
        stored = server.stored(NETWORKING, "Ingress", "default", "hello")
        assert stored["status"]["observedGeneration"] == 2

        # A bad edit: the last good version keeps serving, and status says what is wrong.
        server.put(kingress(3, service="missing"))
        plane.apply(kingress(3, service="missing"))
        await until(server, lambda: ready_of(patches(server)[-1])[1] == "False")
        assert ready_of(patches(server)[-1]) == (3, "False", "InvalidIngress")
        (ready,) = [c for c in patches(server)[-1]["conditions"] if c["type"] == "Ready"]
        assert "service 'missing' not found" in ready["message"]
        summary = reporter.summary()
        assert summary["leading"] and summary["kingresses"][0]["problem"]
        for client in (first.client, second.client):
            assert client.violations == []
            await client.close()
    assert not is_ready(server.stored(NETWORKING, "Ingress", "default", "hello")["status"], 3)


async def test_a_kingress_translated_after_the_snapshot_waits_for_one_that_carries_it(
    server: FakeApiServer, plane: Plane
) -> None:
    """A snapshot the cache refused, or a staged load's early part: not what gateways get."""
    plane.apply(a_service("hello"))
    before = plane.plane.cache.current()
    plane.apply(kingress(1))
    after = plane.plane.cache.current()
    assert before is not None and after is not None
    key = ObjectKey("default", "hello")
    async with connected(server) as api:
        reporter = new_reporter(api, plane)  # not run: its own snapshot follower is off
        reporter.published(before, plane.state)
        assert reporter.tracker.readiness(key) is None
        reporter.published(after, plane.state)
        readiness = reporter.tracker.readiness(key)
        assert readiness is not None and readiness.generation == 1
