"""Changes while traffic flows: scale from zero, Route edits, and edits that are wrong."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections import Counter

from knative_xds import synth as s

from .gateway import request

HELLO = "hello.default.example.com"


class SteadyLoad:
    """A request loop through the gateway in a thread, counting every reply until stopped.

    Bounded: it stops by itself after `limit` requests even if nobody stops it.
    """

    def __init__(self, port: int, host: str, limit: int = 50_000) -> None:
        self.counts: Counter = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, host, limit), daemon=True)

    def _run(self, port: int, host: str, limit: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(limit):
            if self._stop.is_set():
                break
            try:
                r = request(port, host, conn=conn)
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            if r.status != 200:
                self.failures.append(f"HTTP {r.status}")
            else:
                self.counts[r.revision] += 1
        conn.close()

    async def __aenter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        # Join off the event loop: the apps answering this thread's last request run on it.
        await asyncio.to_thread(self._thread.join, 15)

    def total(self) -> int:
        return sum(self.counts.values()) + len(self.failures)


async def test_a_revision_with_no_ready_pods_is_served_by_the_activator_until_pods_are_ready(
    gateway,
):
    activator = await gateway.app("activator")
    pod = await gateway.app("hello-00001")
    objects = [
        s.route("hello", [s.target("hello-00001", 100)]),
        s.revision("hello-00001"),
        s.activator_slice("127.0.0.1", activator),
        s.endpoint_slice("hello-00001", [], pod, not_ready=["127.0.0.1"]),
    ]
    await gateway.start(objects)
    await gateway.wait_served(HELLO, "activator")

    via_activator = await gateway.get(HELLO)
    assert via_activator.headers["knative-serving-revision"] == "hello-00001"
    assert via_activator.headers["knative-serving-namespace"] == "default"

    async with SteadyLoad(gateway.external, HELLO) as load:
        objects[-1] = s.endpoint_slice("hello-00001", ["127.0.0.1"], pod)
        gateway.write(objects)
        await gateway.wait_served(HELLO, "hello-00001")
        await gateway.wait_until(lambda: load.counts["hello-00001"] >= 50, what="pod traffic")

    assert load.failures == []
    after = await gateway.tally(HELLO, 100)
    assert after == {"hello-00001": 100}


async def test_pods_going_away_sends_traffic_back_to_the_activator(gateway):
    activator = await gateway.app("activator")
    pod = await gateway.app("hello-00001")
    objects = [
        s.route("hello", [s.target("hello-00001", 100)]),
        s.revision("hello-00001"),
        s.activator_slice("127.0.0.1", activator),
        s.endpoint_slice("hello-00001", ["127.0.0.1"], pod),
    ]
    await gateway.start(objects)
    await gateway.wait_served(HELLO, "hello-00001")

    gateway.write(objects[:-1])

    await gateway.wait_served(HELLO, "activator")


async def test_editing_percents_shifts_traffic_with_no_failed_request(gateway):
    revisions = await gateway.ready_revisions("hello-00001", "hello-00002")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *revisions])
    await gateway.wait_served(HELLO, "hello-00001")

    async with SteadyLoad(gateway.external, HELLO) as load:
        for split in ((90, 10), (50, 50), (0, 100)):
            seen = load.total()
            traffic = [s.target("hello-00001", split[0]), s.target("hello-00002", split[1])]
            gateway.write([s.route("hello", traffic), *revisions])
            await gateway.wait_until(lambda n=seen: load.total() > n + 100, what="requests flowing")
        await gateway.wait_served(HELLO, "hello-00002")

    assert load.failures == [], load.failures[:5]
    assert load.counts["hello-00002"] > 0
    assert await gateway.tally(HELLO, 200) == {"hello-00002": 200}


async def test_splitting_to_a_new_revision_and_removing_the_old_one_fails_no_request(gateway):
    """Make before break: the new cluster is warm before a route uses it, and the old
    one is removed only after no route the gateway holds still uses it."""
    old, new = await gateway.app("hello-00001"), await gateway.app("hello-00002")
    first = [
        s.route("hello", [s.target("hello-00001", 100)]),
        s.revision("hello-00001"),
        s.endpoint_slice("hello-00001", ["127.0.0.1"], old),
    ]
    await gateway.start(first)
    await gateway.wait_served(HELLO, "hello-00001")
    second = [
        s.revision("hello-00002"),
        s.endpoint_slice("hello-00002", ["127.0.0.1"], new, suffix="b"),
    ]

    async with SteadyLoad(gateway.external, HELLO) as load:
        gateway.write([s.route("hello", [s.target("hello-00002", 100)]), *first[1:], *second])
        await gateway.wait_served(HELLO, "hello-00002")
        gateway.write([s.route("hello", [s.target("hello-00002", 100)]), *second])
        await gateway.wait_until(
            lambda: (
                "default/hello-00001"
                not in gateway.plane.cache.current().of(
                    "type.googleapis.com/envoy.config.cluster.v3.Cluster"
                )
            ),
            what="the old cluster to leave the snapshot",
        )
        seen = load.total()
        await gateway.wait_until(lambda: load.total() > seen + 200, what="requests after removal")

    assert load.failures == [], load.failures[:5]
    assert load.counts["hello-00002"] > 0


async def test_a_bad_edit_is_reported_and_envoy_keeps_serving_the_last_good_config(gateway):
    revisions = await gateway.ready_revisions("hello-00001", "hello-00002")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *revisions])
    await gateway.wait_served(HELLO, "hello-00001")
    published = gateway.plane.cache.current().serial

    bad = [s.target("hello-00001", 60), s.target("hello-00002", 30)]  # sums to 90
    gateway.write([s.route("hello", bad), *revisions])

    def reported() -> bool:
        return any("percents must sum to 100" in str(p) for p in gateway.plane.pipeline.problems())

    await gateway.wait_until(reported, what="the bad edit to be reported")
    problem = next(p for p in gateway.plane.pipeline.problems() if "sum to 100" in str(p))
    assert problem.kind == "Route" and problem.key == "default/hello"
    assert problem.field == "spec.traffic" and problem.origin.endswith("objects.yaml")
    assert gateway.plane.cache.current().serial == published  # nothing new was pushed
    assert await gateway.tally(HELLO, 100) == {"hello-00001": 100}


async def test_a_file_that_is_not_yaml_keeps_its_objects_serving(gateway):
    port = await gateway.app("hello-00001")
    objects = [
        s.route("hello", [s.target("hello-00001", 100)]),
        s.revision("hello-00001"),
        s.endpoint_slice("hello-00001", ["127.0.0.1"], port),
    ]
    await gateway.start(objects)
    await gateway.wait_served(HELLO, "hello-00001")

    (gateway.config_dir / "objects.yaml").write_text("kind: Route\n  metadata: [unclosed\n")

    await gateway.wait_until(
        lambda: any("not valid YAML" in str(p) for p in gateway.plane.pipeline.problems()),
        what="the YAML error to be reported",
    )
    # A second edit, in another file, that Envoy must show: once it serves it, any push the
    # broken file caused (published before this one) has reached Envoy too.
    gateway.write([s.route("marker", [s.target("hello-00001", 100)])], "marker.yaml")
    await gateway.wait_served("marker.default.example.com", "hello-00001")
    assert await gateway.tally(HELLO, 50) == {"hello-00001": 50}

    gateway.write(objects)
    await gateway.wait_until(lambda: not gateway.plane.pipeline.problems(), what="the fix")
