"""State → Envoy resources, re-translating only what an update touched.

The translator remembers each Route's virtual hosts and each Revision's cluster
and endpoints. An `Update` from the resolver says which Routes and which pod
sets changed; only those are rebuilt, and the result is a `Delta`: the names
per type whose resource changed or went away.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..model import ObjectKey, Revision, Route, Update, Visibility
from ..resources import CLUSTER, ENDPOINT, Resource
from .clusters import cluster_resource
from .endpoints import choose_endpoints, endpoints_resource
from .listeners import listener_resource
from .names import LISTENER_FOR, cluster_name
from .routes import VirtualHostPart, route_table, virtual_host_parts


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the gateway Envoy listens; the same for every connected gateway."""

    listen_address: str = "0.0.0.0"
    external_port: int = 8080
    internal_port: int = 8081


@dataclass(slots=True)
class Delta:
    """Changed resources per type: a Resource to set, or None to remove."""

    changes: dict[str, dict[str, Resource | None]] = field(default_factory=dict)

    def set(self, resource: Resource) -> None:
        self.changes.setdefault(resource.type_url, {})[resource.name] = resource

    def remove(self, type_url: str, name: str) -> None:
        self.changes.setdefault(type_url, {})[name] = None

    def count(self) -> int:
        return sum(len(v) for v in self.changes.values())


@dataclass(slots=True)
class Stats:
    """How much work translations did; tests use it to guard the O(change) property."""

    routes_translated: int = 0
    clusters_built: int = 0
    endpoints_built: int = 0
    route_tables_built: int = 0


class Translator:
    def __init__(self, gateway: GatewayConfig) -> None:
        self._gateway = gateway
        self._routes: dict[ObjectKey, Route] = {}
        self._parts: dict[Visibility, dict[str, VirtualHostPart]] = {v: {} for v in Visibility}
        self._part_names: dict[ObjectKey, list[tuple[Visibility, str]]] = {}
        self._revision_refs: dict[ObjectKey, Counter[Revision]] = {}
        self._clusters: dict[ObjectKey, tuple[Revision, Resource]] = {}
        self._endpoints: dict[ObjectKey, tuple[tuple, Resource]] = {}
        self._started = False
        self.stats = Stats()

    def translate(self, update: Update) -> Delta:
        delta = Delta()
        touched_revisions: set[ObjectKey] = set(update.changed_pods)
        touched_tables: set[Visibility] = set()
        if not self._started:
            # Listeners and both route tables exist from the first push, even when empty.
            self._started = True
            for resource in self._listeners():
                delta.set(resource)
            touched_tables = set(Visibility)
        for key in sorted(update.changed_routes):
            touched_revisions |= self._apply_route(
                key, update.state.routes.get(key), touched_tables
            )
        for visibility in sorted(touched_tables, key=lambda v: v.value):
            delta.set(route_table(visibility, self._parts[visibility].values()))
            self.stats.route_tables_built += 1
        if update.activator_changed:
            touched_revisions |= set(self._revision_refs)
        for rev in sorted(touched_revisions):
            self._refresh_revision(rev, update, delta)
        return delta

    def _listeners(self) -> list[Resource]:
        g = self._gateway
        ports = {Visibility.EXTERNAL: g.external_port, Visibility.CLUSTER_LOCAL: g.internal_port}
        return [
            listener_resource(
                name=LISTENER_FOR[v],
                address=g.listen_address,
                port=ports[v],
                route_table=LISTENER_FOR[v],
            )
            for v in Visibility
        ]

    def _apply_route(
        self, key: ObjectKey, route: Route | None, tables: set[Visibility]
    ) -> set[ObjectKey]:
        """Swap one Route's virtual hosts; return the revisions whose references changed."""
        old = self._routes.pop(key, None)
        if old is route:
            if route is not None:
                self._routes[key] = route
            return set()
        for visibility, name in self._part_names.pop(key, []):
            self._parts[visibility].pop(name, None)
            tables.add(visibility)
        touched = self._unref(old) if old else set()
        if route is not None:
            self._routes[key] = route
            self.stats.routes_translated += 1
            names = []
            for part in virtual_host_parts(route):
                self._parts[part.visibility][part.name] = part
                names.append((part.visibility, part.name))
                tables.add(part.visibility)
            self._part_names[key] = names
            touched |= self._ref(route)
        return touched

    def _ref(self, route: Route) -> set[ObjectKey]:
        for revision in route.revisions:
            self._revision_refs.setdefault(revision.key, Counter())[revision] += 1
        return {r.key for r in route.revisions}

    def _unref(self, route: Route) -> set[ObjectKey]:
        for revision in route.revisions:
            refs = self._revision_refs[revision.key]
            refs[revision] -= 1
            if refs[revision] <= 0:
                del refs[revision]
            if not refs:
                del self._revision_refs[revision.key]
        return {r.key for r in route.revisions}

    def _refresh_revision(self, key: ObjectKey, update: Update, delta: Delta) -> None:
        refs = self._revision_refs.get(key)
        name = cluster_name(key)
        if not refs:
            if self._clusters.pop(key, None):
                delta.remove(CLUSTER, name)
            if self._endpoints.pop(key, None):
                delta.remove(ENDPOINT, name)
            return
        # Two Routes may hold different versions of one Revision (one kept at its
        # last good state); pick one deterministically.
        revision = min(refs, key=repr)
        held = self._clusters.get(key)
        if held is None or held[0] != revision:
            resource = cluster_resource(revision)
            self._clusters[key] = (revision, resource)
            self.stats.clusters_built += 1
            if held is None or held[1].version != resource.version:
                delta.set(resource)
        state = update.state
        chosen = choose_endpoints(
            revision,
            pods=state.pods.get(key, ()),
            activator=state.activator,
            mode=state.activator_mode,
        )
        inputs = (revision.key, chosen)
        held_eps = self._endpoints.get(key)
        if held_eps is None or held_eps[0] != inputs:
            resource = endpoints_resource(revision, chosen)
            self._endpoints[key] = (inputs, resource)
            self.stats.endpoints_built += 1
            delta.set(resource)
