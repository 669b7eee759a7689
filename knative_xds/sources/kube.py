"""Knative objects from a Kubernetes cluster: listed, then watched, gated on the first full state.

How the CLI runs it (`serve --kubernetes`), through the one source interface::

    async with connect() as api:                    # in-cluster config, else kubeconfig
        source = KubeSource(api, input="ingress")
        await plane.run(source, ready)              # the pipeline and the watches, until cancelled

`KubeSource.run(sink, ready)` never returns: it holds changes back until
*every* collection below has been listed once, hands that first complete state
to `sink.load` (which publishes it in steps: clusters first), sets `ready`, and
from then on passes each change to `sink.submit` (which coalesces and waits for
the load). API errors are logged, reported through `sink.set_source_problems`
while they last, and retried with backoff; they never end `run`. `kube_watch`
holds the list/watch/relist rules, `kube_http` the wire.

What is watched, with selectors so that no watch ever sees every Pod or Secret.
With `input="ingress"` (the default: knative-xds as Knative's networking layer):
the KIngresses (`networking.internal.knative.dev`, all namespaces; which class
is ours is the model's choice, so that a change of class is seen as one), and
the core objects they name: Services (all namespaces), TLS Secrets (field
selector `type=kubernetes.io/tls`), and the EndpointSlices whose label
`networking.internal.knative.dev/serviceType` is not `Public`: a revision's
private slices, and every plain Service's, which carry no such label (the
activator's among them). With `follow_public_endpoints` (which must match the
Resolver's) the revisions' `Public` slices are read instead, and the
unlabelled ones by a watch of their own. With `input="routes"`: Knative's
Routes, Revisions and Configurations (all namespaces), the revisions' slices
(label `serving.knative.dev/revision` too), the activator's in
`knative-serving`, and the TLS Secrets of `knative-serving` (config-xds's
`cluster-cert-secret` is the one certificate this input serves). Both read the
ConfigMaps `config-domain`, `config-network` and `config-xds` (the gateway's
options) there, one named watch each (which RBAC can grant by `resourceNames`).

What is kept: only the fields the model reads (`kinds.KEEP`, `KEEP_METADATA`,
`KEEP_ANNOTATIONS`), so memory grows with the Knative objects and not with
their managedFields or pod templates, and an update to a field the model never
reads (a replica count, a timestamp) is not passed on at all.

Client: the official `kubernetes` client (37 and later) through its asyncio
half, `kubernetes.aio`. Its synchronous half would need a thread per watch
(seven or more), each blocked in a socket read that cancellation cannot
interrupt; `kubernetes_asyncio` is the same generated code under another name.
Only the client's configuration loading (a service-account token that rotates,
a kubeconfig with exec or OIDC plugins) and its authenticated aiohttp session
are used. The list/watch loop is ours: the client's `Watch` helper answers a
410 by watching once more from the same version and then raising, and leaves
listing again and diffing to the caller; and it builds generated model
objects, which would only be thrown away. Importing the client costs about
0.5 s and 27 MB (it loads every generated model), once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ..model import ObjectKey, Problem, RawObject
from ..model.kinds import (
    ACTIVATOR_SERVICE,
    CONFIG_MAP,
    CONFIG_MAPS,
    CONFIGURATION,
    CORE,
    DISCOVERY,
    ENDPOINT_SLICE,
    INGRESS,
    KEEP,
    KEEP_ANNOTATIONS,
    KEEP_DATA,
    KEEP_METADATA,
    KINDS,
    KNATIVE_NAMESPACE,
    NETWORKING,
    REVISION,
    REVISION_LABEL,
    ROUTE,
    SECRET,
    SERVICE,
    SERVICE_NAME_LABEL,
    SERVICE_TYPE_LABEL,
    SERVING,
    Ident,
)
from .base import Changes, Sink
from .kube_http import ClusterConfigError, HttpApi, connect
from .kube_watch import ORIGIN, Collection, KubeApi, Reflector, WatchOptions

__all__ = [
    "ClusterConfigError",
    "HttpApi",
    "Input",
    "KubeSource",
    "collections",
    "connect",
    "trim",
]

log = logging.getLogger(__name__)

TLS_SECRETS = "type=kubernetes.io/tls"


class Input(enum.Enum):
    """What the cluster is read as."""

    # KIngresses of our class, with the Services, Secrets and slices they name:
    # knative-xds as Knative's networking layer (as net-kourier or net-istio are).
    INGRESS = "ingress"
    # Knative's Routes and Revisions read directly, no KIngress in between.
    ROUTES = "routes"


def collections(
    *, input: Input | str = Input.INGRESS, follow_public_endpoints: bool = False
) -> tuple[Collection, ...]:
    """Every list/watch the model needs for this input, each narrowed by its selectors."""
    read = Input(input)
    # `!=` also matches slices without the label, which the model counts as private
    # (a revision's) or as a plain Service's.
    service_type = "=Public" if follow_public_endpoints else "!=Public"
    network = tuple(
        Collection(
            CONFIG_MAP,
            CORE,
            "configmaps",
            namespace=KNATIVE_NAMESPACE,
            field_selector=f"metadata.name={name}",
        )
        for name in CONFIG_MAPS
    )
    if read is Input.ROUTES:
        return (
            Collection(ROUTE, SERVING, "routes"),
            Collection(REVISION, SERVING, "revisions"),
            Collection(CONFIGURATION, SERVING, "configurations"),
            _slices(f"{REVISION_LABEL},{SERVICE_TYPE_LABEL}{service_type}"),
            _slices(f"{SERVICE_NAME_LABEL}={ACTIVATOR_SERVICE}", namespace=KNATIVE_NAMESPACE),
            # Routes name no certificate: the only Secret this input serves is config-xds's
            # cluster-cert-secret, which lives in knative-serving.
            Collection(
                SECRET, CORE, "secrets", namespace=KNATIVE_NAMESPACE, field_selector=TLS_SECRETS
            ),
            *network,
        )
    # The activator's slices carry no serviceType label (activator-service is a plain
    # Service), so the unlabelled slices bring them: a watch of their own would deliver
    # each of them twice.
    unlabelled = (_slices(f"!{SERVICE_TYPE_LABEL}"),) if follow_public_endpoints else ()
    return (
        Collection(INGRESS, NETWORKING, "ingresses"),
        Collection(SERVICE, CORE, "services"),
        _slices(f"{SERVICE_TYPE_LABEL}{service_type}"),
        # A label selector cannot say "Public or none": with the public slices read,
        # the plain Services' (which `!=Public` covers) are a watch of their own.
        *unlabelled,
        Collection(SECRET, CORE, "secrets", field_selector=TLS_SECRETS),
        *network,
    )


def _slices(label_selector: str, *, namespace: str | None = None) -> Collection:
    return Collection(
        ENDPOINT_SLICE,
        DISCOVERY,
        "endpointslices",
        namespace=namespace,
        label_selector=label_selector,
    )


# -- what is kept of each object ------------------------------------------------------

_Tree = dict[str, Any]  # field name -> subtree, or None for "the whole value"


def _tree(kind: str) -> _Tree:
    paths = [
        tuple(p.replace("[]", ".[]").split(".")) for p in (*KEEP_METADATA, *KEEP.get(kind, ()))
    ]
    # Annotation and data keys hold dots, so they are added whole.
    paths += [("metadata", "annotations", key) for key in KEEP_ANNOTATIONS.get(kind, ())]
    paths += [("data", key) for key in KEEP_DATA.get(kind, ())]
    root: _Tree = {}
    for path in paths:
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = None
    return root


_TREES = {kind: _tree(kind) for kind in KINDS}


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


class KubeSource:
    def __init__(
        self,
        api: KubeApi,
        *,
        input: Input | str = Input.INGRESS,
        follow_public_endpoints: bool = False,
        options: WatchOptions | None = None,
    ) -> None:
        self.input = Input(input)
        self.collections = collections(
            input=self.input, follow_public_endpoints=follow_public_endpoints
        )
        self._api = api
        self._options = options or WatchOptions()

    async def run(self, sink: Sink, ready: asyncio.Event) -> None:
        """Feed `sink` until cancelled: first complete state via `load` (then `ready` is
        set), every later change via `submit`."""
        async with asyncio.TaskGroup() as tasks:
            gate = _Gate(sink, ready, self.collections, tasks.create_task)
            for collection in self.collections:
                reflector = Reflector(
                    self._api,
                    collection,
                    emit=gate.emit,
                    project=trim,
                    report=gate.report,
                    options=self._options,
                    events=sink.source_event,
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
        self._held: dict[Ident, RawObject | None] = {}
        self._spawn = spawn

    def emit(
        self, collection: Collection, changes: Mapping[ObjectKey, RawObject | None], listed: bool
    ) -> None:
        batch = {(collection.kind, key): raw for key, raw in changes.items()}
        if listed:
            # A whole list read: the collection is in sync now (its last-sync time moves).
            self._sink.source_health(_scope(collection), True)
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
        self._sink.set_source_problems(_scope(collection), problems)
        # Unhealthy until it reads well again: /readyz says 503, the last good state serves.
        self._sink.source_health(_scope(collection), message is None, message or "")
        if not self._unlisted:
            self._sink.submit({})  # the pipeline logs problems as they come and go


def _scope(collection: Collection) -> str:
    return f"{ORIGIN}: {collection}"
