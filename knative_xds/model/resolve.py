"""Raw Knative objects in, one consistent `State` out, touching only what changed.

The resolver keeps what it learned between updates: the last good parse of each
object, the last good resolution of each Route, and which Routes depend on which
Revisions and Configurations. An update re-parses the objects that changed and
re-resolves only the Routes they touch, so an edit costs what it changes.

Bad input never takes down what is serving: an object that fails to parse keeps
its last good parse, and a Route that fails to resolve keeps its last good
resolution. Both are reported as `Problem`s until they are fixed or deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from immutables import Map

from . import network as net
from .endpoints import EndpointIndex
from .hosts import HostClaims
from .objects import (
    KNATIVE_NAMESPACE,
    ConfigurationSpec,
    EndpointSliceSpec,
    ObjectError,
    RawObject,
    RevisionSpec,
    RouteSpec,
    parse_configuration,
    parse_endpoint_slice,
    parse_revision,
    parse_route,
)
from .types import (
    ActivatorMode,
    HostRule,
    ObjectKey,
    Problem,
    Revision,
    Route,
    Split,
    State,
    Visibility,
)

ROUTE = "Route"
REVISION = "Revision"
CONFIGURATION = "Configuration"
ENDPOINT_SLICE = "EndpointSlice"
CONFIG_MAP = "ConfigMap"
KINDS = (ROUTE, REVISION, CONFIGURATION, ENDPOINT_SLICE, CONFIG_MAP)
NETWORK_CONFIG_MAPS = ("config-domain", "config-network")

Ident = tuple[str, ObjectKey]

_PARSERS = {
    ROUTE: parse_route,
    REVISION: parse_revision,
    CONFIGURATION: parse_configuration,
    ENDPOINT_SLICE: parse_endpoint_slice,
}


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of applying changes: the new state and what in it changed."""

    state: State
    problems: tuple[Problem, ...]
    changed_routes: frozenset[ObjectKey]
    changed_pods: frozenset[ObjectKey]
    activator_changed: bool


@dataclass(slots=True)
class _Dirty:
    """What staged objects touched, for the next `resolve`."""

    routes: set[ObjectKey] = field(default_factory=set)
    revisions: set[ObjectKey] = field(default_factory=set)
    activator: bool = False
    network: bool = False


class Resolver:
    """Turns a stream of object changes into States. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        activator_mode: ActivatorMode = ActivatorMode.AT_ZERO,
        follow_public_endpoints: bool = False,
    ) -> None:
        self._mode = activator_mode
        # Per object: where it came from and a fingerprint of its content. Bodies are
        # not kept (at 10,000 revisions they would be the largest thing in memory),
        # except the ConfigMaps, which are re-read whole.
        self._seen: dict[Ident, tuple[str, bytes]] = {}
        self._config_maps: dict[Ident, RawObject] = {}
        self._specs: dict[Ident, object] = {}
        self._parse_problems: dict[Ident, Problem] = {}
        self._route_problems: dict[ObjectKey, Problem] = {}
        self._routes: dict[ObjectKey, Route] = {}
        self._users: defaultdict[Ident, set[ObjectKey]] = defaultdict(set)
        self._deps: dict[ObjectKey, set[Ident]] = {}
        self._hosts = HostClaims()
        self._endpoints = EndpointIndex(follow_public=follow_public_endpoints)
        self._network = net.NetworkConfig()
        self._state = State(activator_mode=activator_mode)
        self._dirty = _Dirty()

    @property
    def network(self) -> net.NetworkConfig:
        return self._network

    def apply(self, changes: Mapping[Ident, RawObject | None]) -> Update:
        """Apply upserts (a RawObject) and deletions (None), keyed by (kind, key)."""
        self.stage(changes)
        return self.resolve()

    def stage(self, changes: Mapping[Ident, RawObject | None]) -> None:
        """Take objects in (parsed, indexed) without resolving Routes yet; `resolve` follows.

        A first load stages a few hundred files at a time, so the parsed YAML of
        25,000 objects is never all held at once.
        """
        dirty = self._dirty
        for ident, raw in changes.items():
            kind, key = ident
            if kind not in KINDS or not self._store(ident, raw):
                continue
            if kind == ROUTE:
                dirty.routes.add(key)
            elif kind in (REVISION, CONFIGURATION):
                dirty.routes |= self._users.get(ident, set())
                dirty.revisions.add(key)
            elif kind == ENDPOINT_SLICE:
                rev, activator = self._endpoints.index(key, self._slice(key))
                dirty.revisions |= rev
                dirty.activator |= activator
            elif kind == CONFIG_MAP and key.namespace == KNATIVE_NAMESPACE:
                dirty.network |= key.name in NETWORK_CONFIG_MAPS

    def resolve(self) -> Update:
        """Resolve what the objects staged since the last call touched; the new State."""
        dirty, self._dirty = self._dirty, _Dirty()
        dirty_routes = dirty.routes
        if dirty.network:
            self._network = self._read_network()
            dirty_routes |= {k for (kind, k) in self._seen if kind == ROUTE} | set(self._routes)
        changed_routes = self._resolve_routes(dirty_routes)
        changed_pods = self._endpoints.refresh_pods(dirty.revisions, self._slice, self._revision)
        activator_dirty = dirty.activator and self._endpoints.refresh_activator(self._slice)
        if changed_routes or changed_pods or activator_dirty:
            last = self._state
            self._state = State(
                routes=_carry(last.routes, self._routes, changed_routes),
                pods=_carry(last.pods, self._endpoints.pods, changed_pods),
                activator=self._endpoints.activator,
                activator_mode=self._mode,
            )
        return Update(
            state=self._state,
            problems=self.problems(),
            changed_routes=frozenset(changed_routes),
            changed_pods=frozenset(changed_pods),
            activator_changed=activator_dirty,
        )

    def problems(self) -> tuple[Problem, ...]:
        return tuple(sorted([*self._parse_problems.values(), *self._route_problems.values()]))

    # -- objects ----------------------------------------------------------------------

    def _store(self, ident: Ident, raw: RawObject | None) -> bool:
        """Record one object; False when nothing about it changed."""
        previous = self._seen.get(ident)
        if raw is None:
            if previous is None:
                return False
            del self._seen[ident]
            self._config_maps.pop(ident, None)
            self._specs.pop(ident, None)
            self._parse_problems.pop(ident, None)
            return True
        digest = raw.digest
        self._seen[ident] = (raw.origin, digest)
        if previous is not None and previous[1] == digest:
            return False
        if ident[0] == CONFIG_MAP:
            self._config_maps[ident] = raw
        parser = _PARSERS.get(ident[0])
        if parser is None:  # ConfigMaps are read as a whole in _read_network
            return True
        try:
            self._specs[ident] = parser(raw)
            self._parse_problems.pop(ident, None)
        except ObjectError as e:
            # Keep the last good parse (if any) serving; report why this one is unusable.
            self._parse_problems[ident] = Problem(
                raw.origin, ident[0], str(ident[1]), e.field, e.message
            )
        return True

    def _read_network(self) -> net.NetworkConfig:
        config = net.NetworkConfig(activator_mode=self._mode)
        readers = (
            ("config-domain", net.parse_config_domain),
            ("config-network", net.parse_config_network),
        )
        for name, read in readers:
            ident = (CONFIG_MAP, ObjectKey(KNATIVE_NAMESPACE, name))
            raw = self._config_maps.get(ident)
            if raw is None:
                continue
            try:
                config = read(raw, config)
                self._parse_problems.pop(ident, None)
            except ObjectError as e:
                self._parse_problems[ident] = Problem(
                    raw.origin, CONFIG_MAP, str(ident[1]), e.field, e.message
                )
                kept = self._specs.get(ident)
                if isinstance(kept, net.NetworkConfig):
                    config = read_kept(kept, config, name)
                continue
            self._specs[ident] = config
        return config

    # -- routes -----------------------------------------------------------------------

    def _resolve_routes(self, dirty: set[ObjectKey]) -> set[ObjectKey]:
        changed: set[ObjectKey] = set()
        pending = dirty
        while pending:
            self._hosts.freed = False
            for key in sorted(pending):
                before = self._routes.get(key)
                self._resolve_route(key)
                if self._routes.get(key) is not before:
                    changed.add(key)
            # A host freed in this pass may unblock a Route that lost a host conflict,
            # whichever name sorts first: retry those after the pass, and only when a
            # host was freed, so a lasting conflict costs nothing on unrelated updates.
            # Each further pass needs a retried Route to succeed, so this ends.
            pending = self._host_losers() if self._hosts.freed else set()
        return changed

    def _host_losers(self) -> set[ObjectKey]:
        return {k for k, p in self._route_problems.items() if p.field == "hosts"}

    def _resolve_route(self, key: ObjectKey) -> None:
        ident = (ROUTE, key)
        spec = self._specs.get(ident)
        self._set_deps(key, set())
        if spec is None:
            self._route_problems.pop(key, None)
            self._drop_route(key)
            return
        assert isinstance(spec, RouteSpec)
        origin = self._seen[ident][0] if ident in self._seen else ""
        deps: set[Ident] = set()
        try:
            route = self._build_route(spec, deps)
            self._hosts.claim(route, self._routes)
        except ObjectError as e:
            self._set_deps(key, deps)
            self._route_problems[key] = Problem(origin, ROUTE, str(key), e.field, e.message)
            return  # the last good resolution, if any, keeps serving
        self._set_deps(key, deps)
        self._route_problems.pop(key, None)
        previous = self._routes.get(key)
        self._routes[key] = previous if previous == route else route

    def _build_route(self, spec: RouteSpec, deps: set[Ident]) -> Route:
        ns, name = spec.key.namespace, spec.key.name
        revisions: dict[str, Revision] = {}
        targets: list[tuple[str, int, str | None]] = []
        for i, t in enumerate(spec.traffic):
            rev_name = self._target_revision(ns, i, t.revision_name, t.configuration_name, deps)
            revision = self._ready_revision(ns, i, rev_name, deps)
            targets.append((rev_name, t.percent, t.tag))
            if t.percent > 0 or t.tag:
                revisions[rev_name] = revision
        merged: dict[str, int] = defaultdict(int)
        for rev_name, percent, _ in targets:
            merged[rev_name] += percent
        splits = tuple(sorted(Split(r, p) for r, p in merged.items() if p > 0))
        tags = tuple(sorted((tag, rev) for rev, _, tag in targets if tag))
        headers = tags if self._network.tag_header_routing else ()
        rules = list(self._host_rules(spec, name, splits, headers))
        for tag, rev in tags:
            tagged = net.tag_name(self._network, name=name, tag=tag)
            rules.extend(self._host_rules(spec, tagged, (Split(rev, 100),), ()))
        return Route(
            key=spec.key,
            rules=tuple(rules),
            revisions=tuple(revisions[r] for r in sorted(revisions)),
        )

    def _host_rules(
        self, spec: RouteSpec, name: str, splits: tuple[Split, ...], headers: tuple
    ) -> Iterable[HostRule]:
        ns = spec.key.namespace
        if not spec.cluster_local:
            domain = self._network.domain_for(dict(spec.labels))
            host = net.external_host(self._network, name=name, namespace=ns, domain=domain)
            yield HostRule(Visibility.EXTERNAL, (host,), splits, headers)
        yield HostRule(Visibility.CLUSTER_LOCAL, net.cluster_local_hosts(name, ns), splits, headers)

    def _target_revision(
        self, ns: str, i: int, revision: str | None, configuration: str | None, deps: set[Ident]
    ) -> str:
        if revision:
            return revision
        assert configuration
        ident = (CONFIGURATION, ObjectKey(ns, configuration))
        deps.add(ident)
        spec = self._specs.get(ident)
        at = f"spec.traffic[{i}].configurationName"
        if not isinstance(spec, ConfigurationSpec):
            raise ObjectError(at, f"configuration {configuration!r} not found in namespace {ns!r}")
        if not spec.latest_ready_revision:
            raise ObjectError(at, f"configuration {configuration!r} has no ready revision yet")
        return spec.latest_ready_revision

    def _ready_revision(self, ns: str, i: int, name: str, deps: set[Ident]) -> Revision:
        ident = (REVISION, ObjectKey(ns, name))
        deps.add(ident)
        spec = self._specs.get(ident)
        at = f"spec.traffic[{i}]"
        if not isinstance(spec, RevisionSpec):
            raise ObjectError(at, f"revision {name!r} not found in namespace {ns!r}")
        if not spec.ready:
            raise ObjectError(at, f"revision {name!r} is not ready: {spec.reason}")
        return spec.revision

    def _drop_route(self, key: ObjectKey) -> None:
        self._routes.pop(key, None)
        self._hosts.release(key)

    def _set_deps(self, key: ObjectKey, deps: set[Ident]) -> None:
        for ident in self._deps.pop(key, set()):
            users = self._users.get(ident)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[ident]
        if deps:
            self._deps[key] = deps
            for ident in deps:
                self._users[ident].add(key)

    # -- endpoints --------------------------------------------------------------------

    def _slice(self, key: ObjectKey) -> EndpointSliceSpec | None:
        spec = self._specs.get((ENDPOINT_SLICE, key))
        return spec if isinstance(spec, EndpointSliceSpec) else None

    def _revision(self, key: ObjectKey) -> RevisionSpec | None:
        spec = self._specs.get((REVISION, key))
        return spec if isinstance(spec, RevisionSpec) else None


def read_kept(kept: net.NetworkConfig, config: net.NetworkConfig, name: str) -> net.NetworkConfig:
    """Carry over the fields one ConfigMap controls from its last good reading."""
    if name == "config-domain":
        return replace(config, domains=kept.domains)
    return replace(
        config,
        domain_template=kept.domain_template,
        tag_template=kept.tag_template,
        tag_header_routing=kept.tag_header_routing,
    )


def _carry(last: Map, now: Mapping[ObjectKey, Any], changed: Iterable[ObjectKey]) -> Map:
    """The last published map with only the `changed` keys brought up to `now`.

    Copying every Route into each State would make a one-Route edit O(all routes).
    """
    with last.mutate() as out:
        for key in changed:
            value = now.get(key)
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out.finish()
