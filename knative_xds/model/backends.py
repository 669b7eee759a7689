"""The backends served Ingresses use, and the endpoints chosen for each.

This is where the rule Knative expects of an ingress lives: a revision with no
ready pod is served by the activator, which holds the request and wakes a pod;
once pods are ready, traffic goes straight to them (or, with the activator
pinned, through it still). A plain Service's backend takes its ready endpoints.
An endpoint set is never chosen empty while the activator can serve.

Slices are indexed by the group they serve (a revision's private slices, or a
Service's), so a slice's change recomputes only the backends of its group.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from .objects import EndpointSliceSpec, is_activator_slice
from .types import ActivatorEndpoints, ActivatorMode, Backend, Endpoint, ObjectKey, Protocol

# A pod's port by the revision's protocol: the first of these names on the slice.
POD_PORTS = {Protocol.HTTP1: ("http", "http1"), Protocol.H2C: ("http2", "h2c")}

# Slices serve a revision (its private or, followed, public Service) or a plain Service.
Group = tuple[str, ObjectKey]
REVISION_GROUP = "revision"
SERVICE_GROUP = "service"

SliceSpec = Callable[[ObjectKey], EndpointSliceSpec | None]


def group_of(backend: Backend) -> Group | None:
    if backend.dns is not None:
        return None
    if backend.revision is not None:
        return (REVISION_GROUP, backend.revision)
    assert backend.service is not None
    return (SERVICE_GROUP, backend.service)


def choose(
    backend: Backend,
    pods: tuple[Endpoint, ...],
    activator: ActivatorEndpoints,
    mode: ActivatorMode,
) -> tuple[Endpoint, ...]:
    """A revision's endpoints: its pods, or the activator at zero (or when pinned)."""
    if backend.revision is None:
        return pods
    via_activator = activator.for_protocol(backend.protocol)
    pinned = mode is ActivatorMode.ALWAYS or backend.activator_always
    if pods and not (pinned and via_activator):
        return pods
    return via_activator or pods


class BackendIndex:
    def __init__(self, *, follow_public: bool, mode: ActivatorMode) -> None:
        # Which revision slices count: the private ones, or (Knative's ServerlessService in
        # proxy mode) the public ones; the same choice the watch selectors make.
        self._follow_public = follow_public
        self._mode = mode
        self._slices_of: defaultdict[Group, set[ObjectKey]] = defaultdict(set)
        self._slice_groups: dict[ObjectKey, tuple[Group, ...]] = {}
        self._activator_slices: set[ObjectKey] = set()
        # Backends in use: per name, the versions the served Ingresses hold.
        self._users: dict[str, Counter[Backend]] = {}
        self._by_group: defaultdict[Group, set[str]] = defaultdict(set)
        self.backends: dict[str, Backend] = {}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self.activator = ActivatorEndpoints()

    # -- which backends are in use --------------------------------------------------------

    def swap(self, old: Iterable[Backend], new: Iterable[Backend]) -> set[str]:
        """One Ingress moved from `old` backends to `new`; the backend names touched."""
        old, new = tuple(old), tuple(new)
        if old == new:
            return set()
        for backend in old:
            users = self._users[backend.name]
            users[backend] -= 1
            if users[backend] <= 0:
                del users[backend]
        for backend in new:
            self._users.setdefault(backend.name, Counter())[backend] += 1
        return {b.name for b in (*old, *new)}

    def refresh(self, names: Iterable[str], slice_of: SliceSpec) -> set[str]:
        """Bring these backends (and their endpoints) up to date; the names that changed."""
        changed: set[str] = set()
        for name in names:
            users = self._users.get(name)
            before = self.backends.get(name)
            if not users:
                self._users.pop(name, None)
                if before is not None:
                    self._forget(before)
                    changed.add(name)
                continue
            # Two Ingresses may hold different versions of one backend (one kept at its
            # last good state); pick one deterministically.
            backend = min(users, key=repr)
            if backend != before:
                if before is not None:
                    self._forget(before)
                self.backends[name] = backend
                if (group := group_of(backend)) is not None:
                    self._by_group[group].add(name)
                changed.add(name)
            if self._choose(backend, slice_of):
                changed.add(name)
        return changed

    def _forget(self, backend: Backend) -> None:
        self.backends.pop(backend.name, None)
        self.endpoints.pop(backend.name, None)
        group = group_of(backend)
        if group is not None:
            names = self._by_group.get(group)
            if names is not None:
                names.discard(backend.name)
                if not names:
                    del self._by_group[group]

    def _choose(self, backend: Backend, slice_of: SliceSpec) -> bool:
        group = group_of(backend)
        if group is None:
            return False
        if backend.revision is not None:
            port_names = POD_PORTS[backend.protocol]
        else:
            port_names = (backend.port_name,)
        found: set[Endpoint] = set()
        for key in self._slices_of.get(group) or ():
            spec = slice_of(key)
            if spec is not None:
                found.update(spec.endpoints(port_names))
        value = choose(backend, tuple(sorted(found)), self.activator, self._mode)
        if self.endpoints.get(backend.name) == value:
            return False
        self.endpoints[backend.name] = value
        return True

    # -- which slices serve what ----------------------------------------------------------

    def index(self, key: ObjectKey, spec: EndpointSliceSpec | None) -> tuple[set[str], bool]:
        """A slice was added, changed or deleted (None): the backends it touched, and
        whether it touched the activator."""
        activator = key in self._activator_slices
        self._activator_slices.discard(key)
        groups = set(self._slice_groups.pop(key, ()))
        for group in groups:
            self._slices_of[group].discard(key)
        if spec is not None:
            if is_activator_slice(spec):
                self._activator_slices.add(key)
                activator = True
            else:
                now = self._groups(key.namespace, spec)
                for group in now:
                    self._slices_of[group].add(key)
                if now:
                    self._slice_groups[key] = now
                groups |= set(now)
        touched = {name for g in groups for name in self._by_group.get(g, ())}
        return touched, activator

    def _groups(self, namespace: str, spec: EndpointSliceSpec) -> tuple[Group, ...]:
        groups: list[Group] = []
        if spec.revision and spec.public == self._follow_public:
            groups.append((REVISION_GROUP, ObjectKey(namespace, spec.revision)))
        if spec.service_name:
            groups.append((SERVICE_GROUP, ObjectKey(namespace, spec.service_name)))
        return tuple(groups)

    def refresh_activator(self, slice_of: SliceSpec) -> set[str]:
        """Recompute the activator's addresses (both ports); the backends that changed."""
        http: set[Endpoint] = set()
        h2c: set[Endpoint] = set()
        for key in self._activator_slices:
            spec = slice_of(key)
            if spec is not None:
                http.update(spec.endpoints(POD_PORTS[Protocol.HTTP1]))
                h2c.update(spec.endpoints(POD_PORTS[Protocol.H2C]))
        value = ActivatorEndpoints(http=tuple(sorted(http)), h2c=tuple(sorted(h2c)))
        if value == self.activator:
            return set()
        self.activator = value
        revisions = [b for b in self.backends.values() if b.revision is not None]
        return {b.name for b in revisions if self._choose(b, slice_of)}
