"""For the source tests: Knative objects as the API server returns them, a sink that
records what a source sends (any source: the file source's tests use it too), and a
Kubernetes source running against the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from kubernetes.aio.client import ApiClient, Configuration

from knative_xds.model import ObjectKey, Problem, RawObject
from knative_xds.model.kinds import (
    DEFAULT_INGRESS_CLASS,
    DISCOVERY,
    INGRESS_CLASS_ANNOTATION,
    NETWORKING,
    SERVING,
    Ident,
)
from knative_xds.sources.base import SourceEvent
from knative_xds.sources.kube import HttpApi, KubeSource
from knative_xds.sources.kube_watch import Backoff, WatchOptions
from tests.fake_kube_api import Changed, FakeApiServer

# Backoff shrunk to milliseconds, so that retries take no time in tests.
FAST = WatchOptions(backoff=Backoff(first=0.02, cap=0.1), watch_seconds=30)
DEADLINE = 2.0


# -- objects -------------------------------------------------------------------------


def a_route(name: str = "hello", *, revision: str = "hello-00001", ns: str = "default") -> dict:
    traffic = [{"revisionName": revision, "percent": 100}]
    return {
        "apiVersion": SERVING,
        "kind": "Route",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"traffic": traffic},
    }


def a_revision(name: str = "hello-00001", *, ready: bool = True, replicas: int = 1) -> dict:
    return {
        "apiVersion": SERVING,
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"serving.knative.dev/configuration": "hello"},
        },
        "spec": {
            "containers": [{"image": "ghcr.io/example/hello", "ports": [{"containerPort": 8080}]}],
            "timeoutSeconds": 300,
        },
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": str(ready),
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
            "actualReplicas": replicas,
        },
    }


def a_slice(
    revision: str = "hello-00001",
    *,
    address: str = "10.0.0.5",
    ready: bool = True,
    service_type: str = "Private",
    suffix: str = "abcde",
) -> dict:
    labels = {
        "serving.knative.dev/revision": revision,
        "networking.internal.knative.dev/serviceType": service_type,
        "kubernetes.io/service-name": f"{revision}-private",
    }
    endpoint = {
        "addresses": [address],
        "conditions": {"ready": ready},
        "targetRef": {"kind": "Pod", "name": f"{revision}-pod"},
    }
    return {
        "apiVersion": DISCOVERY,
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{revision}-{service_type.lower()}-{suffix}",
            "namespace": "default",
            "labels": labels,
        },
        "addressType": "IPv4",
        "endpoints": [endpoint],
        "ports": [{"name": "http", "port": 8012, "protocol": "TCP"}],
    }


def an_activator_slice(address: str = "10.1.0.1") -> dict:
    return {
        "apiVersion": DISCOVERY,
        "kind": "EndpointSlice",
        "metadata": {
            "name": "activator-service-xyz",
            "namespace": "knative-serving",
            "labels": {"kubernetes.io/service-name": "activator-service"},
        },
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8012}, {"name": "http2", "port": 8013}],
    }


def a_plain_slice(
    service: str = "backend", *, address: str = "10.2.0.7", ns: str = "default"
) -> dict:
    """A slice of a Service that is no revision's: the endpointslice controller's labels only."""
    return {
        "apiVersion": DISCOVERY,
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x7k2p",
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def an_ingress(
    name: str = "hello",
    *,
    host: str = "hello.default.example.com",
    service: str = "hello-00001",
    ingress_class: str = DEFAULT_INGRESS_CLASS,
    generation: int = 1,
) -> dict:
    """A KIngress as Knative's Route controller writes it: one public rule, one split."""
    split = {
        "serviceName": service,
        "serviceNamespace": "default",
        "servicePort": 80,
        "percent": 100,
        "appendHeaders": {
            "Knative-Serving-Revision": service,
            "Knative-Serving-Namespace": "default",
        },
    }
    return {
        "apiVersion": NETWORKING,
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": "default",
            "generation": generation,
            "labels": {"serving.knative.dev/route": name},
            "annotations": {INGRESS_CLASS_ANNOTATION: ingress_class},
        },
        "spec": {
            "httpOption": "Enabled",
            "rules": [
                {
                    "hosts": [host],
                    "visibility": "ExternalIP",
                    "http": {"paths": [{"splits": [split]}]},
                }
            ],
        },
        "status": {"observedGeneration": generation},
    }


def a_service(name: str = "hello-00001", *, revision: str | None = "hello-00001") -> dict:
    """A core/v1 Service: by default a revision's public one, as Knative makes it."""
    labels = {"serving.knative.dev/revision": revision} if revision else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.12",
            "ports": [{"name": "http", "port": 80, "targetPort": 8012, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {}},
    }


def a_config_map(name: str, data: Mapping[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "knative-serving"},
        "data": dict(data),
    }


def a_cluster(server: FakeApiServer) -> None:
    """One served route, its revision and pods, the activator and Knative's ConfigMaps."""
    for body in (a_route(), a_revision(), a_slice(), an_activator_slice()):
        server.put(body)
    server.put(a_config_map("config-domain", {"example.com": ""}))
    server.put(a_config_map("config-network", {"tag-header-based-routing": "disabled"}))


def a_kingress_cluster(server: FakeApiServer) -> None:
    """One KIngress of our class, the Service it names, its revision's pods, the activator."""
    for body in (an_ingress(), a_service(), a_slice(), an_activator_slice()):
        server.put(body)
    server.put(a_config_map("config-domain", {"example.com": ""}))
    server.put(a_config_map("config-network", {}))


def route_key(name: str = "hello") -> Ident:
    return ("Route", ObjectKey("default", name))


def ingress_key(name: str = "hello") -> Ident:
    return ("Ingress", ObjectKey("default", name))


# -- a recording sink -------------------------------------------------------------------------


class RecordingSink:
    """Records what a source hands over, in order; `until` waits for a condition on it.

    Given the `ready` event the source is run with, `load` also records whether it
    was already set (`ready_before_load`), which a source must never do.
    """

    def __init__(self, ready: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[str, dict[Ident, RawObject | None]]] = []
        self.problem_log: list[tuple[str, list[Problem]]] = []
        self.health_log: list[tuple[str, bool, str]] = []
        self.events: list[SourceEvent] = []
        self.ready_before_load: list[bool] = []
        self._ready = ready
        self._changed = Changed()

    def stage(self, changes: Mapping[Ident, RawObject | None]) -> None:
        self.calls.append(("stage", dict(changes)))
        self._poke()

    async def load(self, changes: Mapping[Ident, RawObject | None] | None = None) -> None:
        if self._ready is not None:
            self.ready_before_load.append(self._ready.is_set())
        self.calls.append(("load", dict(changes or {})))
        self._poke()

    @property
    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]

    def submit(self, changes: Mapping[Ident, RawObject | None]) -> None:
        if changes:
            self.calls.append(("submit", dict(changes)))
        self._poke()

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None:
        self.problem_log.append((scope, list(problems)))
        self._poke()

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        self.health_log.append((scope, healthy, detail))
        self._poke()

    def source_event(self, event: SourceEvent) -> None:
        self.events.append(event)
        self._poke()

    @property
    def submitted(self) -> list[dict[Ident, RawObject | None]]:
        return [changes for verb, changes in self.calls if verb == "submit"]

    def state(self) -> dict[Ident, RawObject]:
        state: dict[Ident, RawObject] = {}
        for _, changes in self.calls:
            for ident, raw in changes.items():
                if raw is None:
                    state.pop(ident, None)
                else:
                    state[ident] = raw
        return state

    async def until(self, check: Callable[[], Any]) -> None:
        await self._changed.until(check)

    def _poke(self) -> None:
        self._changed.fire()


# -- a source against the fake API server ---------------------------------------------


@contextlib.asynccontextmanager
async def running(
    source: Any, sink: Any, ready: asyncio.Event | None = None
) -> AsyncIterator[asyncio.Event]:
    """Any source running into `sink` for the block; yields its `ready` event."""
    ready = ready or asyncio.Event()
    task = asyncio.create_task(source.run(sink, ready))
    try:
        yield ready
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def a_source(server: FakeApiServer, **kwargs: Any) -> AsyncIterator[KubeSource]:
    """A KubeSource on `server`; it reads Routes (`input="routes"`) unless told otherwise,
    as the list/watch tests put Routes, Revisions and slices."""
    client = ApiClient(Configuration(host=server.url))
    kwargs.setdefault("input", "routes")
    try:
        yield KubeSource(HttpApi(client), options=kwargs.pop("options", FAST), **kwargs)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def watching(
    server: FakeApiServer, sink: Any, *, ready: asyncio.Event | None = None, **kwargs: Any
) -> AsyncIterator[asyncio.Event]:
    """A source on `server` feeding `sink`, for at most DEADLINE seconds; yields `ready`."""
    async with (
        a_source(server, **kwargs) as source,
        running(source, sink, ready) as ready,
        asyncio.timeout(DEADLINE),
    ):
        yield ready


async def synced(server: FakeApiServer, ready: asyncio.Event, *, watches: int = 9) -> None:
    """Until the first state is applied and every collection (`watches` of them: nine
    for input routes) is being watched."""
    await ready.wait()
    await server.wait_for(lambda: len(server.requests("watch")) >= watches)
