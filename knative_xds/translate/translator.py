"""State → Envoy resources, re-translating only what an update touched.

The translator remembers each Route's route tables and scopes and each
Revision's cluster and endpoints. An `Update` from the resolver says which Routes and which pod
sets changed; only those are rebuilt, and the result is a `Delta`: the names
per type whose resource changed or went away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model import ObjectKey, Revision, Route, Update, Visibility
from ..resources import CLUSTER, ENDPOINT, SCOPED_ROUTE, Resource
from .clusters import cluster_resource
from .endpoints import choose_endpoints, endpoints_resource
from .listeners import listener_resource
from .names import LISTENER_FOR, cluster_name, route_table_name, scope_name
from .routes import route_tables
from .scopes import scope_key, scope_resource


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
    scopes_built: int = 0


class Translator:
    def __init__(self, gateway: GatewayConfig) -> None:
        self._gateway = gateway
        # Per Route: the version whose revisions are referenced, and the version its
        # route tables and scopes (keyed type URL, name) were built from. The two are
        # apart only between the steps of a staged translation.
        self._routes: dict[ObjectKey, Route] = {}
        self._built: dict[ObjectKey, Route] = {}
        self._route_resources: dict[ObjectKey, dict[tuple[str, str], Resource]] = {}
        self._revision_refs: dict[ObjectKey, Counter[Revision]] = {}
        self._clusters: dict[ObjectKey, tuple[Revision, Resource]] = {}
        self._endpoints: dict[ObjectKey, tuple[tuple, Resource]] = {}
        self._started = False
        self.stats = Stats()

    def translate(self, update: Update) -> Delta:
        """Everything the update changed, in one delta."""
        delta = self.translate_revisions(update)
        self.translate_routes(update, sorted(update.changed_routes), delta)
        return delta

    def translate_revisions(self, update: Update) -> Delta:
        """Step one of a staged translation: the clusters and endpoints of every revision
        the update touched, with the changed Routes' references to them.

        A first load publishes these before any route table: Envoy takes seconds to
        warm 10,000 clusters, and it can do that while the tables are being built.
        `translate_routes` is step two.
        """
        delta = Delta()
        touched: set[ObjectKey] = set(update.changed_pods)
        for key in sorted(update.changed_routes):
            touched |= self._swap_refs(key, update.state.routes.get(key))
        if update.activator_changed:
            touched |= set(self._revision_refs)
        for rev in sorted(touched):
            self._refresh_revision(rev, update, delta)
        return delta

    def translate_routes(self, update: Update, keys: Iterable[ObjectKey], delta: Delta) -> None:
        """Step two: the route tables and scopes of these Routes, into `delta`."""
        if not self._started:
            self._started = True
            for resource in self._listeners():
                delta.set(resource)
        for key in keys:
            self._swap_resources(key, update.state.routes.get(key), delta)

    def _listeners(self) -> list[Resource]:
        g = self._gateway
        ports = {Visibility.EXTERNAL: g.external_port, Visibility.CLUSTER_LOCAL: g.internal_port}
        return [
            listener_resource(
                name=LISTENER_FOR[v],
                address=g.listen_address,
                port=ports[v],
                visibility=v,
            )
            for v in Visibility
        ]

    def _swap_refs(self, key: ObjectKey, route: Route | None) -> set[ObjectKey]:
        """Move one Route's revision references to `route`; return the revisions touched."""
        old = self._routes.pop(key, None)
        if route is not None:
            self._routes[key] = route
        if old is route:
            return set()
        touched = self._unref(old) if old else set()
        return touched | self._ref(route) if route is not None else touched

    def _swap_resources(self, key: ObjectKey, route: Route | None, delta: Delta) -> None:
        """Rebuild one Route's tables and scopes, if `route` is not what they were built from."""
        if self._built.get(key) is route:
            return
        before = self._route_resources.pop(key, {})
        after = self._build(route, before) if route is not None else {}
        for ident in before.keys() - after.keys():
            # A scope can pass to another Route in the same update; when that
            # Route came first, the scope it set must stay.
            if delta.changes.get(ident[0], {}).get(ident[1]) is None:
                delta.remove(*ident)
        for ident, resource in after.items():
            held = before.get(ident)
            if held is None or held.version != resource.version:
                delta.set(resource)
        if route is None:
            self._built.pop(key, None)
        else:
            self._built[key] = route
            self._route_resources[key] = after

    def _build(
        self, route: Route, before: dict[tuple[str, str], Resource]
    ) -> dict[tuple[str, str], Resource]:
        self.stats.routes_translated += 1
        out: dict[tuple[str, str], Resource] = {}
        for table in route_tables(route):
            out[(table.type_url, table.name)] = table
            self.stats.route_tables_built += 1
        for rule in route.rules:
            table = route_table_name(rule.visibility, route.key)
            # One scope per key: a cluster-local rule's three hosts share one (scopes.py).
            for key in dict.fromkeys(scope_key(rule.visibility, h) for h in rule.hosts):
                ident = (SCOPED_ROUTE, scope_name(rule.visibility, key))
                if ident in out:
                    continue
                kept = before.get(ident)
                # A scope is its key and its table: a split edit leaves it as it was.
                if kept is not None and kept.refs == (table,):
                    out[ident] = kept
                    continue
                out[ident] = scope_resource(rule.visibility, key, table)
                self.stats.scopes_built += 1
        return out

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
