"""KIngress status written to an API server: its shape, when, how fast, and by whom.

The fake API server speaks HTTP on loopback; the writer and the elector talk
to it through the same `HttpApi` the control plane uses. Readiness comes from
the real tracker, fed by gateways that ACK as the stream loop applies ACKs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient, Configuration

from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION
from knative_xds.model.types import ObjectKey
from knative_xds.server.callbacks import StreamStatus
from knative_xds.sources.kube_http import HttpApi
from knative_xds.status.conditions import is_ready, rfc3339
from knative_xds.status.readiness import ReadinessTracker
from knative_xds.status.writer import StatusWriter, WriterSettings
from knative_xds.translate import Delta
from tests.fake_kube_api import FakeApiServer
from tests.test_status import Plane, ack, gateway, scope, table

NETWORKING = "networking.internal.knative.dev/v1alpha1"
STATUS_PATH = (
    "/apis/networking.internal.knative.dev/v1alpha1/namespaces/default/ingresses/{}/status"
)
NOW = 1_700_000_000.0
FAST = WriterSettings(retry_first=0.01, retry_cap=0.05)
DEADLINE = 5.0


def key(name: str) -> ObjectKey:
    return ObjectKey("default", name)


def a_kingress(
    name: str, *, ingress_class: str | None = DEFAULT_INGRESS_CLASS, host: str = ""
) -> dict:
    annotations = {} if ingress_class is None else {INGRESS_CLASS_ANNOTATION: ingress_class}
    split = {"serviceNamespace": "default", "serviceName": name, "servicePort": 80}
    rule = {
        "hosts": [host or f"{name}.example.com"],
        "visibility": "ExternalIP",
        "http": {"paths": [{"splits": [split]}]},
    }
    return {
        "apiVersion": NETWORKING,
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"rules": [rule]},
    }


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@contextlib.asynccontextmanager
async def connected(server: FakeApiServer, token: str = "writer") -> AsyncIterator[HttpApi]:
    client = ApiClient(Configuration(host=server.url, api_key={"authorization": f"Bearer {token}"}))
    try:
        yield HttpApi(client)
    finally:
        await client.close()


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[HttpApi]:
    async with connected(server) as http:
        yield http


@pytest.fixture
def gw() -> StreamStatus:
    return gateway()


@pytest.fixture
def tracker(gw: StreamStatus) -> ReadinessTracker:
    """A tracker with one gateway connected (`gw`)."""
    return ReadinessTracker(streams=[gw])


@pytest.fixture
def plane(tracker: ReadinessTracker) -> Plane:
    return Plane(tracker)


@contextlib.asynccontextmanager
async def running(job: Callable[[], Any]) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(job())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def writer(api: HttpApi, tracker: ReadinessTracker, **kwargs: Any) -> StatusWriter:
    kwargs.setdefault("settings", FAST)
    kwargs.setdefault("clock", lambda: NOW)
    return StatusWriter(api, tracker, **kwargs)


async def until(server: FakeApiServer, check: Callable[[], Any], seconds: float = DEADLINE) -> None:
    async with asyncio.timeout(seconds):
        await server.wait_for(lambda: bool(check()))


async def eventually(check: Callable[[], Any], seconds: float = DEADLINE) -> None:
    """For conditions no request reveals (the elector's own state): looked at every 10 ms."""
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


def patches(server: FakeApiServer, name: str = "") -> list[Mapping[str, Any]]:
    return [s.body["status"] for s in server.requests("patch", f"/{name}/" if name else "")]


def ready_of(status: Mapping[str, Any]) -> tuple[int, str, str]:
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    return status["observedGeneration"], ready["status"], ready.get("reason", "")


def served(plane: Plane, *gateways: StreamStatus, name: str) -> None:
    """`name` published at generation 1 and accepted by these gateways."""
    snapshot = plane.serve(key(name), f"{name}.example.com", 1)
    for stream in gateways:
        ack(plane.tracker, stream, snapshot, [key(name)])


# -- what is written --------------------------------------------------------------------


async def test_a_ready_kingress_gets_knatives_status_shape_in_one_merge_patch(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    server.put(a_kingress("hello"))
    served(plane, gw, name="hello")
    async with running(writer(api, tracker).run):
        await until(server, lambda: server.requests("patch"))
    (seen,) = server.requests("patch")
    assert seen.path == STATUS_PATH.format("hello")
    assert seen.content_type == "application/merge-patch+json"
    at = rfc3339(NOW)
    assert seen.body == {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "LoadBalancerReady", "status": "True", "lastTransitionTime": at},
                {"type": "NetworkConfigured", "status": "True", "lastTransitionTime": at},
                {"type": "Ready", "status": "True", "lastTransitionTime": at},
            ],
            "publicLoadBalancer": {
                "ingress": [{"domainInternal": "knative-xds-gateway.knative-xds.svc.cluster.local"}]
            },
            "privateLoadBalancer": {
                "ingress": [
                    {"domainInternal": "knative-local-gateway.knative-xds.svc.cluster.local"}
                ]
            },
        }
    }
    stored = server.stored(NETWORKING, "Ingress", "default", "hello")
    assert is_ready(stored["status"], stored["metadata"]["generation"])
    assert stored["spec"] == a_kingress("hello")["spec"]  # a status write leaves the rest


async def test_ready_follows_the_generation_and_waits_for_every_gateway(
    server: FakeApiServer, api: HttpApi, plane: Plane
) -> None:
    server.put(a_kingress("hello"))
    first, second = gateway(), gateway()
    tracker = plane.tracker = ReadinessTracker(streams=[first, second])
    snapshot = plane.serve(key("hello"), "v1.example.com", 1)
    ack(tracker, first, snapshot, [key("hello")])
    ack(tracker, second, snapshot, [key("hello")])
    async with running(writer(api, tracker).run):
        await until(server, lambda: patches(server, "hello"))
        assert ready_of(patches(server, "hello")[0]) == (1, "True", "")

        server.put(a_kingress("hello", host="v2.example.com"))
        assert (
            server.stored(NETWORKING, "Ingress", "default", "hello")["metadata"]["generation"] == 2
        )
        snapshot = plane.serve(key("hello"), "v2.example.com", 2)
        await until(server, lambda: len(patches(server, "hello")) == 2)
        assert ready_of(patches(server, "hello")[1]) == (2, "Unknown", "WaitingForGateways")

        ack(tracker, first, snapshot, [key("hello")])
        # One gateway of two: nothing to write yet. The next write seen is another's.
        server.put(a_kingress("other"))
        served(plane, first, second, name="other")
        await until(server, lambda: patches(server, "other"))
        assert len(patches(server, "hello")) == 2

        ack(tracker, second, snapshot, [key("hello")])
        await until(server, lambda: len(patches(server, "hello")) == 3)
        assert ready_of(patches(server, "hello")[2]) == (2, "True", "")
    stored = server.stored(NETWORKING, "Ingress", "default", "hello")
    assert is_ready(stored["status"], 2)


async def test_with_no_gateway_the_status_says_none_is_connected(
    server: FakeApiServer, api: HttpApi, plane: Plane
) -> None:
    tracker = plane.tracker = ReadinessTracker()
    server.put(a_kingress("hello"))
    snapshot = plane.serve(key("hello"), "hello.example.com", 1)
    async with running(writer(api, tracker).run):
        await until(server, lambda: patches(server))
        (status,) = patches(server)
        assert ready_of(status) == (1, "Unknown", "NoGatewayConnected")
        (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert "no gateway is connected" in ready["message"].lower()
        assert "publicLoadBalancer" not in status

        stream = gateway()
        tracker.on_stream_open(stream)
        ack(tracker, stream, snapshot, [key("hello")])
        await until(server, lambda: ready_of(patches(server)[-1])[1] == "True")


async def test_only_kingresses_of_our_class_are_written(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    server.put(a_kingress("theirs", ingress_class="istio.ingress.networking.knative.dev"))
    server.put(a_kingress("unset", ingress_class=None))
    server.put(a_kingress("empty", ingress_class=""))
    server.put(a_kingress("ours"))
    # Readiness for all four (a model that let the others in by mistake).
    for name in ("theirs", "unset", "empty", "ours"):
        served(plane, gw, name=name)
    async with running(writer(api, tracker).run):
        await until(server, lambda: patches(server))
        # Created after the writer listed: read once, then left alone.
        server.put(
            a_kingress("late-theirs", ingress_class="contour.ingress.networking.knative.dev")
        )
        served(plane, gw, name="late-theirs")
        await until(server, lambda: server.requests("get", "/late-theirs"))
        server.put(a_kingress("late-ours"))
        served(plane, gw, name="late-ours")
        await until(server, lambda: len(patches(server)) == 2)
    assert [s.path for s in server.requests("patch")] == [
        STATUS_PATH.format("ours"),
        STATUS_PATH.format("late-ours"),
    ]
    for name in ("theirs", "unset", "empty", "late-theirs"):
        assert "status" not in server.stored(NETWORKING, "Ingress", "default", name)


async def test_status_is_written_only_when_it_changes(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    # Written by an earlier leader, an hour ago: already what we would write.
    server.put(a_kingress("hello"))
    served(plane, gw, name="hello")
    async with running(writer(api, tracker, clock=lambda: NOW - 3600).run):
        await until(server, lambda: patches(server))
    before = server.stored(NETWORKING, "Ingress", "default", "hello")["status"]
    server.seen.clear()

    server.put(a_kingress("other"))
    served(plane, gw, name="other")
    status_writer = writer(api, tracker)
    async with running(status_writer.run):
        await until(server, lambda: patches(server))
        status_writer.mark([key("hello"), key("other")])  # looked at again: nothing new
        plane.report(plane.cache.current())  # type: ignore[arg-type]
        server.put(a_kingress("third"))
        served(plane, gw, name="third")
        await until(server, lambda: len(patches(server)) == 2)
    assert [s.path for s in server.requests("patch")] == [
        STATUS_PATH.format("other"),
        STATUS_PATH.format("third"),
    ]
    assert server.stored(NETWORKING, "Ingress", "default", "hello")["status"] == before
    assert before["conditions"][0]["lastTransitionTime"] == rfc3339(NOW - 3600)


async def test_an_invalid_kingress_is_not_ready_and_says_what_is_wrong(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    problems = {key("broken"): "spec.rules[0].http.paths[0].splits: percents add up to 90"}
    server.put(a_kingress("broken"))  # never valid: the model serves nothing of it
    server.put(a_kingress("hello"))
    served(plane, gw, name="hello")
    status_writer = writer(api, tracker, problem_of=problems.get)
    async with running(status_writer.run):
        await until(server, lambda: patches(server, "broken") and patches(server, "hello"))
        (broken,) = patches(server, "broken")
        message = problems[key("broken")]
        assert broken["observedGeneration"] == 1
        assert [
            (c["type"], c["status"], c.get("reason"), c.get("message"))
            for c in broken["conditions"]
        ] == [
            (
                "LoadBalancerReady",
                "Unknown",
                "Uninitialized",
                "Waiting for load balancer to be ready",
            ),
            ("NetworkConfigured", "False", "InvalidIngress", message),
            ("Ready", "False", "InvalidIngress", message),
        ]
        # A bad edit of a served KIngress: its generation 2 is reported, not ready.
        server.put(a_kingress("hello", host="bad..example.com"))
        problems[key("hello")] = "spec.rules[0].hosts[0]: not a DNS name"
        status_writer.mark([key("hello")])
        await until(server, lambda: len(patches(server, "hello")) == 2)
    assert ready_of(patches(server, "hello")[1]) == (2, "False", "InvalidIngress")


async def test_a_deleted_kingress_is_dropped_and_a_failed_write_retried(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    server.put(a_kingress("flaky"))
    server.put(a_kingress("deleted-late"))
    server.fail("patch", "/flaky/", 500, times=2)
    server.fail("patch", "/deleted-late/", 404)
    served(plane, gw, name="gone")  # not on the server at all
    served(plane, gw, name="flaky")
    served(plane, gw, name="deleted-late")
    async with running(writer(api, tracker).run):
        await until(server, lambda: len(server.requests("patch", "/flaky/")) == 3)
        server.put(a_kingress("after"))
        served(plane, gw, name="after")
        await until(server, lambda: server.requests("patch", "/after/"))
    assert len(server.requests("get", "/gone")) == 1
    assert not server.requests("patch", "/gone/")
    assert len(server.requests("patch", "/deleted-late/")) == 1
    assert is_ready(server.stored(NETWORKING, "Ingress", "default", "flaky")["status"], 1)


# -- many at once -----------------------------------------------------------------------


def many_published(server: FakeApiServer, plane: Plane, count: int):
    """`count` KIngresses on the server and published; none accepted yet."""
    delta = Delta()
    keys = [key(f"r-{i:04d}") for i in range(count)]
    for k in keys:
        server.put(a_kingress(k.name))
        delta.set(table(k, f"{k.name}.example.com"))
        delta.set(scope(k))
        plane.generations[k] = 1
    snapshot = plane.cache.apply(delta)
    assert snapshot is not None
    plane.report(snapshot)
    return snapshot, keys


async def test_a_thousand_kingresses_turning_ready_are_written_sixteen_at_a_time(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    snapshot, keys = many_published(server, plane, 1000)
    ack(tracker, gw, snapshot, keys)
    server.latency["patch"] = 0.02
    settings = WriterSettings(rate=100_000, burst=100_000)
    started = time.monotonic()
    async with running(writer(api, tracker, settings=settings).run):
        await until(server, lambda: len(patches(server)) == 1000, seconds=30)
    took = time.monotonic() - started
    assert server.peak["patch"] == 16
    # One at a time would take 1,000 x 20 ms.
    assert took < 1000 * 0.02 / 2
    assert all(ready_of(s) == (1, "True", "") for s in patches(server))


async def test_writes_keep_within_the_rate_and_burst(
    server: FakeApiServer, api: HttpApi, tracker: ReadinessTracker, plane: Plane, gw: StreamStatus
) -> None:
    snapshot, keys = many_published(server, plane, 1000)
    ack(tracker, gw, snapshot, keys)
    rate, burst = 500.0, 50
    settings = WriterSettings(rate=rate, burst=burst)
    async with running(writer(api, tracker, settings=settings).run):
        await until(server, lambda: len(patches(server)) == 1000, seconds=30)
    times = [s.at for s in server.requests("patch")]
    assert times[-1] - times[0] >= (1000 - burst - 1) / rate * 0.95
    # The server answers on the writer's event loop: on a busy machine requests sent
    # apart can be taken in together. 100 ms of slack (a burst of 200 would still show).
    window, jitter = 0.5, 0.1
    for i, start in enumerate(times):
        inside = bisect.bisect_right(times, start + window) - i
        assert inside <= burst + rate * (window + jitter), f"{inside} writes within {window} s"
    assert server.peak["patch"] <= 16
