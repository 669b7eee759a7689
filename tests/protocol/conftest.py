"""A real ADS server on loopback, fed through the real pipeline, and the clients a test opens.

The server state comes from Knative objects through the resolver, translator
and cache, so the tests see the same resources a gateway would. The clients
(xds_client.py) check every response they receive.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
import pytest

from knative_xds import synth
from knative_xds.app import ControlPlane, Settings
from knative_xds.model import RawObject
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE
from knative_xds.server.stream import Stream
from knative_xds.translate import GatewayConfig

from .envoy_like import Gateway
from .xds_client import WAIT, DeltaClient, SotwClient, XdsClient


def cluster(revision: str) -> str:
    """The cluster (and endpoint set) name of a revision in the default namespace."""
    return f"default/{revision}"


def tables(route: str) -> list[str]:
    """The route tables of a public Route in the default namespace: one per listener, sorted."""
    return [f"external/default/{route}", f"internal/default/{route}"]


HELLO_TABLES = tables("hello")


# -- Knative objects through the real pipeline ------------------------------------------


def raw_objects(*docs: Mapping[str, Any], delete: bool = False) -> dict:
    """Synth dicts as the pipeline's change map: (kind, key) → RawObject, or None to delete."""
    changes: dict = {}
    for doc in docs:
        # A copy, so a test editing its dict afterwards cannot reach into the resolver.
        raw = RawObject.from_dict(copy.deepcopy(dict(doc)), "test")
        changes[raw.ident] = None if delete else raw
    return changes


def many_routes(count: int) -> list[dict]:
    """`count` Routes, each on its own ready revision."""
    objects = []
    for i in range(count):
        objects += [
            synth.revision(f"r-{i}", ready=True),
            synth.route(f"route-{i}", [synth.target(f"r-{i}", 100)]),
        ]
    return objects


def base_objects() -> list[dict]:
    """Two Routes, each on one ready revision with no pods: both served by the activator.

    The activator's HTTP/1 and h2c ports are the same, so a revision switching
    protocol changes its cluster and not its endpoints.
    """
    return [
        synth.activator_slice("10.0.0.1", 8012, 8012),
        synth.revision("hello-1", ready=True),
        synth.route("hello", [synth.target("hello-1", 100)]),
        synth.revision("other-1", ready=True),
        synth.route("other", [synth.target("other-1", 100)]),
    ]


class World:
    """The control plane under test and the Knative objects it serves."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._marks = 0

    @property
    def instance(self) -> str:
        return self.plane.cache.instance

    def apply(self, *docs: Mapping[str, Any]) -> None:
        applied = self.plane.pipeline.apply(raw_objects(*docs))
        assert applied.snapshot is not None, f"nothing published: {self.plane.pipeline.problems()}"

    def delete(self, *docs: Mapping[str, Any]) -> None:
        applied = self.plane.pipeline.apply(raw_objects(*docs, delete=True))
        assert applied.snapshot is not None, f"nothing published: {self.plane.pipeline.problems()}"

    def names(self, type_url: str) -> set[str]:
        snapshot = self.plane.cache.current()
        assert snapshot is not None
        return set(snapshot.of(type_url))

    def version(self, type_url: str, name: str) -> str:
        snapshot = self.plane.cache.current()
        assert snapshot is not None
        return snapshot.of(type_url)[name].version

    # A few edits the tests share.

    def add_revision_to_hello(self) -> None:
        """hello splits 50/50 onto a new revision: a new cluster, and route tables naming it."""
        self.apply(
            synth.revision("hello-2", ready=True),
            synth.route("hello", [synth.target("hello-1", 50), synth.target("hello-2", 50)]),
        )

    def add_later_route(self) -> None:
        """A third Route on a new revision: a new cluster and endpoint set appear."""
        self.apply(
            synth.revision("later-1", ready=True),
            synth.route("later", [synth.target("later-1", 100)]),
        )

    def move_hello_to(self, revision: str) -> None:
        self.apply(
            synth.revision(revision, ready=True),
            synth.route("hello", [synth.target(revision, 100)]),
        )

    def give_pods(self, revision: str, *addresses: str) -> None:
        """Ready pods for a revision: its endpoints change, its cluster does not."""
        self.apply(synth.endpoint_slice(revision, addresses, 8012))

    def mark(self, type_url: str, revision: str) -> str:
        """Change a ready revision so that only resources of `type_url` change (its cluster,
        its endpoints, or the route tables of its Routes); the type's new version.

        Each call is a new change: a new pod address, a new timeout, h2c toggled. The
        revision's other settings are those of `synth.revision(name, ready=True)`.
        """
        self._marks += 1
        n = self._marks
        before = self.counters()
        if type_url == ENDPOINT:
            self.give_pods(revision, f"10.99.{n // 250}.{n % 250 + 1}")
        elif type_url == ROUTE:
            self.apply(synth.revision(revision, ready=True, timeout=100 + n))
        elif type_url == CLUSTER:
            self.apply(synth.revision(revision, ready=True, h2c=n % 2 == 1))
        else:
            raise ValueError(f"no marker change for {type_url}")
        moved = {t for t, c in self.counters().items() if c != before.get(t)}
        assert moved == {type_url}, f"marking {revision} for {type_url} changed {moved}"
        snapshot = self.plane.cache.current()
        assert snapshot is not None
        return snapshot.version(type_url)

    def counters(self) -> dict[str, int]:
        snapshot = self.plane.cache.current()
        return dict(snapshot.counters) if snapshot is not None else {}


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `condition()` holds, checking between event-loop turns; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- fixtures -----------------------------------------------------------------------------


def new_plane() -> ControlPlane:
    return ControlPlane(Settings(gateway=GatewayConfig("127.0.0.1", 18080, 18081)))


class Harness:
    """A started control plane, a channel to it, and the clients a test opened."""

    def __init__(self, plane: ControlPlane, port: int) -> None:
        self.plane = plane
        self.world = World(plane)
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.clients: list[XdsClient] = []

    def sotw(self, node_id: str | None = None) -> SotwClient:
        client = SotwClient(self.channel, node_id or self._next_node())
        self.clients.append(client)
        return client

    def delta(self, node_id: str | None = None) -> DeltaClient:
        client = DeltaClient(self.channel, node_id or self._next_node())
        self.clients.append(client)
        return client

    def _next_node(self) -> str:
        return f"gateway-{len(self.clients) + 1}"

    def stream_of(self, client: XdsClient) -> Stream | None:
        """The server's newest open stream for this client's node."""
        mine = [s for s in self.plane.ads.streams.values() if s.status.node_id == client.node.id]
        return max(mine, key=lambda s: s.status.id, default=None)

    async def caught_up(self, client: XdsClient) -> None:
        """Wait until the server has read every request the client wrote.

        A request and a snapshot publish race each other; a test whose outcome
        depends on the server having seen the request first waits for this.
        """

        def read_all() -> bool:
            stream = self.stream_of(client)
            return stream is not None and sum(stream.status.decisions.values()) == client.written

        await eventually(read_all)

    async def barrier(
        self, client: XdsClient, type_url: str, revision: str, expect: Iterable[str]
    ) -> Any:
        """Prove that what the client saw last pushed nothing more: once the server has
        read the client's requests, change `revision` so that `type_url` must be pushed,
        and assert the first response is that change's, naming exactly `expect`.

        A stream plans its types in push order against the latest snapshot, so the
        marker's type must not come before the one that must stay quiet (a push of
        that type would then arrive after the marker's and go unseen), and `expect`
        should differ from what a wrong push would carry.
        """
        await self.caught_up(client)
        version = self.world.mark(type_url, revision)
        return await client.expect_next_is(type_url, expect, version=version)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.channel.close()
        await self.plane.stop(grace=0)

    def violations(self) -> list[str]:
        return [v for c in self.clients for v in c.violations]


async def start_harness(*, load: bool = True) -> Harness:
    plane = new_plane()
    if load:
        World(plane).apply(*base_objects())
    port = await plane.start_xds("127.0.0.1:0")
    return Harness(plane, port)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()
    try:
        yield h
    finally:
        await h.close()
    assert h.violations() == [], "the fake-client check failed"


@pytest.fixture
async def bare_harness() -> AsyncIterator[Harness]:
    """A control plane whose state has no Route at all: listeners and empty route tables only."""
    h = await start_harness(load=False)
    h.world.apply(synth.activator_slice("10.0.0.1", 8012, 8012))
    try:
        yield h
    finally:
        await h.close()
    assert h.violations() == [], "the fake-client check failed"


@pytest.fixture(params=["sotw", "delta"])
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def gateway(harness: Harness, flavour: str) -> Gateway:
    """An Envoy-like client (envoy_like.py) on the harness, SotW or Delta."""
    return Gateway(harness.delta() if flavour == "delta" else harness.sotw(), harness.plane.ads)
