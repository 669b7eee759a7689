"""Raw objects in, one consistent `State` out, touching only what changed.

Two inputs become one model: Knative Routes with their Revisions
(`from_routes.py`) and KIngresses of our class with their Services and Secrets
(`from_kingress.py`) each resolve into an `Ingress`. The resolver keeps what
it learned between updates: the last good parse of each object, the last good
resolution of each Ingress, and which Ingresses depend on which objects. An
update re-parses the objects that changed and re-resolves only the Ingresses
they touch, so an edit costs what it changes. Which endpoints each backend
gets (the activator or ready pods) is decided here too (`backends.py`).

Bad input never takes down what is serving: an object that fails to parse keeps
its last good parse, and an Ingress that fails to resolve keeps its last good
resolution. Both are reported as `Problem`s until they are fixed or deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from immutables import Map

from . import network as net
from .backends import BackendIndex
from .certificates import CertificateIndex
from .cluster_cert import CONFIG_XDS, cluster_cert_key, cluster_cert_problem
from .config_maps import problem_of, read_gateway, read_network
from .from_kingress import kingress_ingress
from .from_routes import route_ingress
from .hosts import HostClaims
from .kinds import (
    CONFIG_MAP,
    CONFIGURATION,
    DEFAULT_INGRESS_CLASS,
    ENDPOINT_SLICE,
    GATEWAY_CONFIG_MAP,
    INGRESS,
    KINDS,
    KNATIVE_NAMESPACE,
    NETWORK_CONFIG_MAPS,
    REVISION,
    ROUTE,
    SECRET,
    SERVICE,
    Ident,
)
from .kingress import IngressSpec, ingress_class, parse_ingress, parse_secret, parse_service
from .objects import (
    EndpointSliceSpec,
    ObjectError,
    RawObject,
    RouteSpec,
    check_key,
    parse_configuration,
    parse_endpoint_slice,
    parse_revision,
    parse_route,
)
from .types import ActivatorMode, GatewayOptions, Ingress, ObjectKey, Problem, State

_PARSERS = {
    ROUTE: parse_route,
    REVISION: parse_revision,
    CONFIGURATION: parse_configuration,
    ENDPOINT_SLICE: parse_endpoint_slice,
    INGRESS: parse_ingress,
    SERVICE: parse_service,
    SECRET: parse_secret,
}
# Kinds an Ingress is resolved from, and kinds an Ingress depends on.
_INPUTS = (ROUTE, INGRESS)
_DEPENDENCIES = (REVISION, CONFIGURATION, SERVICE, SECRET)


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of applying changes: the new state and what in it changed."""

    state: State
    problems: tuple[Problem, ...]
    changed_ingresses: frozenset[ObjectKey]
    # Backends (cluster names) added, removed, or whose definition or endpoints changed.
    changed_backends: frozenset[str] = frozenset()
    changed_certificates: frozenset[ObjectKey] = frozenset()


@dataclass(slots=True)
class _Dirty:
    """What staged objects touched, for the next `resolve`."""

    ingresses: set[Ident] = field(default_factory=set)
    backends: set[str] = field(default_factory=set)
    secrets: set[ObjectKey] = field(default_factory=set)
    activator: bool = False
    network: bool = False
    gateway: bool = False


class Resolver:
    """Turns a stream of object changes into States. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        activator_mode: ActivatorMode = ActivatorMode.AT_ZERO,
        follow_public_endpoints: bool = False,
        ingress_class: str = DEFAULT_INGRESS_CLASS,
    ) -> None:
        self._mode = activator_mode
        self._class = ingress_class
        # Per object: where it came from and a fingerprint of its content. Bodies are
        # not kept (at 10,000 revisions they would be the largest thing in memory),
        # except the ConfigMaps, which are re-read whole.
        self._seen: dict[Ident, tuple[str, bytes]] = {}
        self._config_maps: dict[Ident, RawObject] = {}
        self._specs: dict[Ident, object] = {}
        self._parse_problems: dict[Ident, Problem] = {}
        self._ingress_problems: dict[Ident, Problem] = {}
        self._ingresses: dict[ObjectKey, Ingress] = {}
        self._users: defaultdict[Ident, set[Ident]] = defaultdict(set)
        self._deps: dict[Ident, set[Ident]] = {}
        self._certificates = CertificateIndex()
        self._hosts = HostClaims()
        self._backends = BackendIndex(follow_public=follow_public_endpoints, mode=activator_mode)
        self._network = net.NetworkConfig()
        self._gateway = GatewayOptions()
        self._state = State(activator_mode=activator_mode)
        self._dirty = _Dirty()

    @property
    def network(self) -> net.NetworkConfig:
        return self._network

    @property
    def state(self) -> State:
        """The State of the last `resolve`."""
        return self._state

    def apply(self, changes: Mapping[Ident, RawObject | None]) -> Update:
        """Apply upserts (a RawObject) and deletions (None), keyed by (kind, key)."""
        self.stage(changes)
        return self.resolve()

    def stage(self, changes: Mapping[Ident, RawObject | None]) -> None:
        """Take objects in (parsed, indexed) without resolving Ingresses yet; `resolve` follows.

        A first load stages a few hundred files at a time, so the parsed YAML of
        25,000 objects is never all held at once.
        """
        dirty = self._dirty
        for ident, raw in changes.items():
            kind, key = ident
            if kind == INGRESS and raw is not None and not self._ours(raw):
                raw = None  # another class's (or no class): never served, never written
            if kind not in KINDS or not self._store(ident, raw):
                continue
            if kind in _INPUTS:
                dirty.ingresses.add(ident)
                # A Route and a KIngress of one name are one Ingress, and the Route wins:
                # a KIngress of its name must hear of it.
                if kind == ROUTE and (INGRESS, key) in self._specs:
                    dirty.ingresses.add((INGRESS, key))
            elif kind in _DEPENDENCIES:
                dirty.ingresses |= self._users.get(ident, set())
                if kind == SECRET:
                    dirty.secrets.add(key)
            elif kind == ENDPOINT_SLICE:
                touched, activator = self._backends.index(key, self._slice(key))
                dirty.backends |= touched
                dirty.activator |= activator
            elif kind == CONFIG_MAP and key.namespace == KNATIVE_NAMESPACE:
                dirty.network |= key.name in NETWORK_CONFIG_MAPS
                dirty.gateway |= key.name == GATEWAY_CONFIG_MAP

    def _ours(self, raw: RawObject) -> bool:
        try:
            return ingress_class(raw) == self._class
        except ObjectError:
            return False  # annotations that are not a map of strings name no class

    def resolve(self) -> Update:
        """Resolve what the objects staged since the last call touched; the new State."""
        steps = self.resolve_in_steps(per_step=None)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def resolve_in_steps(self, per_step: int | None) -> Generator[None, None, Update]:
        """`resolve`, pausing (a `yield`) after every `per_step` Ingresses resolved, so that
        a caller with an event loop lets it run in between (a relist of 10,000). The
        new State is the generator's return value; `state` is the old one until then.
        """
        dirty, self._dirty = self._dirty, _Dirty()
        if dirty.network:
            self._network = read_network(
                self._config_maps, self._specs, self._parse_problems, self._mode
            )
            dirty.ingresses |= {i for i in self._seen if i[0] == ROUTE}
            dirty.ingresses |= {(ROUTE, k) for k, v in self._ingresses.items() if v.kind == ROUTE}
        # Gateway options change listeners only: no Ingress is resolved again for them.
        gateway_moved = False
        if dirty.gateway:
            gateway = read_gateway(self._config_maps, self._parse_problems, self._gateway)
            dirty.secrets |= self._certificates.use_for_gateway(
                cluster_cert_key(self._gateway), cluster_cert_key(gateway)
            )
            gateway_moved, self._gateway = gateway != self._gateway, gateway
        before = dict(self._ingresses)
        changed = yield from self._resolve_ingresses(dirty.ingresses, per_step)
        touched = set(dirty.backends)
        for key in changed:
            old, new = before.get(key), self._ingresses.get(key)
            touched |= self._backends.swap(old.backends if old else (), new.backends if new else ())
            dirty.secrets |= self._certificates.swap(key, old, new)
        changed_backends = self._backends.refresh(touched, self._slice)
        if dirty.activator:
            changed_backends |= self._backends.refresh_activator(self._slice)
        changed_certs = self._certificates.refresh(
            dirty.secrets, lambda k: self._specs.get((SECRET, k))
        )
        if changed or changed_backends or changed_certs or dirty.activator or gateway_moved:
            last = self._state
            self._state = State(
                ingresses=_carry(last.ingresses, self._ingresses, changed),
                endpoints=_carry(last.endpoints, self._backends.endpoints, changed_backends),
                backends=_carry(last.backends, self._backends.backends, changed_backends),
                certificates=_carry(
                    last.certificates, self._certificates.certificates, changed_certs
                ),
                activator=self._backends.activator,
                activator_mode=self._mode,
                gateway=self._gateway,
            )
        return Update(
            state=self._state,
            problems=self.problems(),
            changed_ingresses=frozenset(changed),
            changed_backends=frozenset(changed_backends),
            changed_certificates=frozenset(changed_certs),
        )

    def problems(self) -> tuple[Problem, ...]:
        found = [*self._parse_problems.values(), *self._ingress_problems.values()]
        if (cert := self._cluster_cert_problem()) is not None:
            found.append(cert)
        return tuple(sorted(found))

    def _cluster_cert_problem(self) -> Problem | None:
        key = cluster_cert_key(self._gateway)
        if key is None:
            return None
        config = self._seen.get((CONFIG_MAP, CONFIG_XDS))
        return cluster_cert_problem(
            self._gateway,
            parsed=self._specs.get((SECRET, key)),
            served=self._certificates.certificates,
            origin=config[0] if config else "",
        )

    def problem_of(self, ident: Ident) -> Problem | None:
        """Why this object is not served as it is now (its parse, then its resolution)."""
        return self._parse_problems.get(ident) or self._ingress_problems.get(ident)

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
        if parser is None:  # ConfigMaps are read as a whole (config_maps.py)
            return True
        try:
            check_key(raw)
            self._specs[ident] = parser(raw)
            self._parse_problems.pop(ident, None)
        except Exception as e:  # one object must never stop the pipeline
            # Keep the last good parse (if any) serving; report why this one is unusable.
            self._parse_problems[ident] = problem_of(raw.origin, ident, e)
        return True

    # -- ingresses --------------------------------------------------------------------

    def _resolve_ingresses(
        self, dirty: set[Ident], per_step: int | None
    ) -> Generator[None, None, set[ObjectKey]]:
        changed: set[ObjectKey] = set()
        pending = dirty
        done = 0
        while pending:
            self._hosts.freed = False
            self._hosts.displaced = set()
            for ident in sorted(pending):
                key = ident[1]
                before = self._ingresses.get(key)
                self._resolve_one(ident)
                if self._ingresses.get(key) is not before:
                    changed.add(key)
                done += 1
                if per_step is not None and done % per_step == 0:
                    yield
            # A host freed in this pass may unblock an Ingress that lost a host conflict
            # or has shadowed hosts, whichever name sorts first: retry those after the
            # pass, and only when a host was freed, so a lasting conflict costs nothing on
            # unrelated updates. Each further pass needs a retried Ingress to succeed (or
            # a yielding claim to be taken, which only a firm one does), so this ends.
            pending = self._retry() if self._hosts.freed else set()
            pending |= {self._ident_of(k) for k in self._hosts.displaced if k in self._ingresses}
        return changed

    def _retry(self) -> set[Ident]:
        losers = {i for i, p in self._ingress_problems.items() if p.field == "hosts"}
        return losers | {self._ident_of(k) for k in self._hosts.shadowing if k in self._ingresses}

    def _ident_of(self, key: ObjectKey) -> Ident:
        return (self._ingresses[key].kind, key)

    def _resolve_one(self, ident: Ident) -> None:
        kind, key = ident
        spec = self._specs.get(ident)
        self._set_deps(ident, set())
        served = self._ingresses.get(key)
        if spec is None:
            self._ingress_problems.pop(ident, None)
            if served is not None and served.kind == kind:
                self._drop(key)
            return
        origin = self._seen[ident][0] if ident in self._seen else ""
        deps: set[Ident] = set()
        try:
            ingress = self._build(ident, spec, deps)
            ingress = self._hosts.claim(ingress, self._ingresses)
        except Exception as e:  # one Ingress must never stop the pipeline
            self._set_deps(ident, deps)
            self._ingress_problems[ident] = problem_of(origin, ident, e)
            return  # the last good resolution, if any, keeps serving
        self._set_deps(ident, deps)
        self._ingress_problems.pop(ident, None)
        self._ingresses[key] = served if served == ingress else ingress

    def _build(self, ident: Ident, spec: object, deps: set[Ident]) -> Ingress:
        kind, key = ident
        if kind == ROUTE:
            assert isinstance(spec, RouteSpec)
            return route_ingress(spec, self._network, self._find, deps)
        assert isinstance(spec, IngressSpec)
        if (ROUTE, key) in self._specs:
            raise ObjectError(
                "metadata.name",
                f"route {key} of the same name is served from its Route and Revisions;"
                " give one of them another name",
            )
        return kingress_ingress(spec, self._find, deps)

    def _find(self, kind: str, key: ObjectKey) -> object:
        return self._specs.get((kind, key))

    def _drop(self, key: ObjectKey) -> None:
        self._ingresses.pop(key, None)
        self._hosts.release(key)

    def _set_deps(self, ident: Ident, deps: set[Ident]) -> None:
        for dep in self._deps.pop(ident, set()):
            users = self._users.get(dep)
            if users is not None:
                users.discard(ident)
                if not users:
                    del self._users[dep]
        if deps:
            self._deps[ident] = deps
            for dep in deps:
                self._users[dep].add(ident)

    # -- endpoints --------------------------------------------------------------------

    def _slice(self, key: ObjectKey) -> EndpointSliceSpec | None:
        spec = self._specs.get((ENDPOINT_SLICE, key))
        return spec if isinstance(spec, EndpointSliceSpec) else None


def _carry(last: Map, now: Mapping[Any, Any], changed: Iterable[Any]) -> Map:
    """The last published map with only the `changed` keys brought up to `now`.

    Copying every Ingress into each State would make a one-Ingress edit O(all of them).
    """
    with last.mutate() as out:
        for key in changed:
            value = now.get(key)
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out.finish()
