"""Knative objects from a Kubernetes cluster: listed, then watched, gated on the first full state.

How the CLI runs it (`serve --kubernetes`)::

    async with connect() as api:                    # in-cluster config, else kubeconfig
        source = KubeSource(api, follow_public_endpoints=args.follow_public_endpoints)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(pipeline.run())
            tasks.create_task(source.run(pipeline, ready))
            await ready.wait()                      # the first complete state is applied
            ...                                     # now serve

`KubeSource.run` never returns: it holds changes back until *every*
collection below has been listed once, hands that first complete state to
`pipeline.load` (which publishes it in steps: clusters first), sets `ready`,
and from then on passes each change to `pipeline.submit` (which coalesces and
waits for the load). API errors are logged, reported through
`pipeline.set_source_problems` while they last, and retried with backoff; they
never end `run`. `kube_watch` holds the list/watch/relist rules, `kube_http`
the wire.

What is watched, with selectors so that no watch ever sees every Pod or Secret:
Knative's Routes, Revisions and Configurations (all namespaces); the
EndpointSlices of revision services (label `serving.knative.dev/revision`, and
`networking.internal.knative.dev/serviceType` other than `Public`, or only
`Public` with `follow_public_endpoints`, which must match the Resolver's); the
activator's EndpointSlices in `knative-serving`; the ConfigMaps `config-domain`
and `config-network` there, one named watch each (which RBAC can grant by
`resourceNames`).

What is kept: only the fields the model reads (`KEEP`), so memory grows with
the Knative objects and not with their managedFields or pod templates, and an
update to a field the model never reads (a replica count, a timestamp) is not
passed on at all.

Client: the official `kubernetes` client (37 and later) through its asyncio
half, `kubernetes.aio`. Its synchronous half would need a thread per watch
(seven), each blocked in a socket read that cancellation cannot interrupt;
`kubernetes_asyncio` is the same generated code under another name. Only the
client's configuration loading (a service-account token that rotates, a
kubeconfig with exec or OIDC plugins) and its authenticated aiohttp session are
used. The list/watch loop is ours: the client's `Watch` helper answers a 410 by
watching once more from the same version and then raising, and leaves listing
again and diffing to the caller; and it builds generated model objects, which
would only be thrown away. Importing the client costs about 0.5 s and 27 MB
(it loads every generated model), once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from ..model import ObjectKey, Problem, RawObject
from ..model.objects import (
    ACTIVATOR_SERVICE,
    BURST_CAPACITY_ANNOTATION,
    DISCOVERY,
    KNATIVE_NAMESPACE,
    REVISION_LABEL,
    SERVICE_NAME_LABEL,
    SERVICE_TYPE_LABEL,
    SERVING,
)
from ..model.resolve import (
    CONFIG_MAP,
    CONFIGURATION,
    ENDPOINT_SLICE,
    NETWORK_CONFIG_MAPS,
    REVISION,
    ROUTE,
    Ident,
)
from .kube_http import ClusterConfigError, HttpApi, connect
from .kube_watch import ORIGIN, Collection, KubeApi, Reflector, WatchOptions

__all__ = [
    "KEEP",
    "ClusterConfigError",
    "HttpApi",
    "KubeSource",
    "Sink",
    "collections",
    "connect",
    "trim",
]

log = logging.getLogger(__name__)

Changes = dict[Ident, RawObject | None]


def collections(*, follow_public_endpoints: bool = False) -> tuple[Collection, ...]:
    """Every list/watch the model needs, each narrowed by its selectors."""
    # `!=` also matches slices without the label, which the resolver counts as private.
    service_type = "=Public" if follow_public_endpoints else "!=Public"
    return (
        Collection(ROUTE, SERVING, "routes"),
        Collection(REVISION, SERVING, "revisions"),
        Collection(CONFIGURATION, SERVING, "configurations"),
        Collection(
            ENDPOINT_SLICE,
            DISCOVERY,
            "endpointslices",
            label_selector=f"{REVISION_LABEL},{SERVICE_TYPE_LABEL}{service_type}",
        ),
        Collection(
            ENDPOINT_SLICE,
            DISCOVERY,
            "endpointslices",
            namespace=KNATIVE_NAMESPACE,
            label_selector=f"{SERVICE_NAME_LABEL}={ACTIVATOR_SERVICE}",
        ),
        *(
            Collection(
                CONFIG_MAP,
                "v1",
                "configmaps",
                namespace=KNATIVE_NAMESPACE,
                field_selector=f"metadata.name={name}",
            )
            for name in NETWORK_CONFIG_MAPS
        ),
    )


# -- what is kept of each object ------------------------------------------------------

# The fields the model reads (model/objects.py, model/network.py), per kind; `[]`
# means every item of a list. When the model starts reading another field, add it
# here: a test checks that trimmed objects parse exactly as whole ones.
KEEP: Mapping[str, tuple[str, ...]] = {
    ROUTE: ("spec.traffic",),
    REVISION: (
        "spec.containers[].ports",
        "spec.timeoutSeconds",
        "status.conditions[].type",
        "status.conditions[].status",
        "status.conditions[].reason",
        "status.conditions[].message",
    ),
    CONFIGURATION: ("status.latestReadyRevisionName",),
    ENDPOINT_SLICE: ("endpoints[].addresses", "endpoints[].conditions.ready", "ports"),
    CONFIG_MAP: ("data",),
}
_METADATA = ("apiVersion", "kind", "metadata.name", "metadata.namespace", "metadata.labels")
# Annotation keys hold dots, so these paths are spelled as tuples.
_ANNOTATIONS: Mapping[str, tuple[str, ...]] = {REVISION: (BURST_CAPACITY_ANNOTATION,)}

_Tree = dict[str, Any]  # field name -> subtree, or None for "the whole value"


def _tree(kind: str) -> _Tree:
    paths = [tuple(p.replace("[]", ".[]").split(".")) for p in (*_METADATA, *KEEP.get(kind, ()))]
    paths += [("metadata", "annotations", key) for key in _ANNOTATIONS.get(kind, ())]
    root: _Tree = {}
    for path in paths:
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = None
    return root


_TREES = {kind: _tree(kind) for kind in KEEP}


def trim(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `body` the model reads; a field of an unexpected type is kept whole,
    so that the model still sees (and reports) it."""
    kept = _project(body, _TREES.get(kind) or _tree(kind))
    return kept if isinstance(kept, dict) else {}


def _project(value: Any, tree: _Tree | None) -> Any:
    if tree is None:
        return value
    if "[]" in tree:
        return [_project(item, tree["[]"]) for item in value] if isinstance(value, list) else value
    if not isinstance(value, Mapping):
        return value
    return {key: _project(value[key], sub) for key, sub in tree.items() if key in value}


# -- the source -----------------------------------------------------------------------


class Sink(Protocol):
    """Where changes go: `knative_xds.pipeline.Pipeline` is one."""

    async def load(self, changes: Mapping[Ident, RawObject | None]) -> object: ...

    def submit(self, changes: Mapping[Ident, RawObject | None]) -> None: ...

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None: ...


class KubeSource:
    def __init__(
        self,
        api: KubeApi,
        *,
        follow_public_endpoints: bool = False,
        options: WatchOptions | None = None,
    ) -> None:
        self.collections = collections(follow_public_endpoints=follow_public_endpoints)
        self._api = api
        self._options = options or WatchOptions()

    async def run(self, sink: Sink, ready: asyncio.Event | None = None) -> None:
        """Feed `sink` until cancelled: first complete state via `load` (then `ready` is
        set), every later change via `submit`."""
        async with asyncio.TaskGroup() as tasks:
            gate = _Gate(sink, ready or asyncio.Event(), self.collections, tasks.create_task)
            for collection in self.collections:
                reflector = Reflector(
                    self._api,
                    collection,
                    emit=gate.emit,
                    project=trim,
                    report=gate.report,
                    options=self._options,
                )
                tasks.create_task(reflector.run(), name=f"watch {collection}")


class _Gate:
    """Holds changes back until every collection has been listed once, then opens."""

    def __init__(
        self,
        sink: Sink,
        ready: asyncio.Event,
        waiting: Iterable[Collection],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._sink = sink
        self._ready = ready
        self._unlisted = set(waiting)
        self._held: Changes = {}
        self._spawn = spawn

    def emit(
        self, collection: Collection, changes: Mapping[ObjectKey, RawObject | None], listed: bool
    ) -> None:
        batch = {(collection.kind, key): raw for key, raw in changes.items()}
        if not self._unlisted:
            if batch:
                self._sink.submit(batch)
            return
        self._held.update(batch)
        if listed:
            self._unlisted.discard(collection)
        if not self._unlisted:
            self._open()

    def _open(self) -> None:
        # Deletions seen before the gate opened only cancel objects held here.
        first = {ident: raw for ident, raw in self._held.items() if raw is not None}
        self._held = {}
        log.info(
            "every collection listed: loading the first complete state (%d objects)", len(first)
        )
        self._spawn(self._load(first))

    async def _load(self, first: Changes) -> None:
        await self._sink.load(first)
        self._ready.set()

    def report(self, collection: Collection, message: str | None) -> None:
        problems = (
            []
            if message is None
            else [Problem(ORIGIN, collection.kind, str(collection), "", message)]
        )
        self._sink.set_source_problems(f"{ORIGIN}: {collection}", problems)
        if not self._unlisted:
            self._sink.submit({})  # the pipeline logs problems as they come and go
