"""Which EndpointSlices serve which revision, and the ready addresses that makes.

The resolver parses each slice; this index remembers which revision (or the
activator) it belongs to, so that a slice's change recomputes only the
addresses of the revision it serves, at the port its protocol uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from .objects import EndpointSliceSpec, RevisionSpec, is_activator_slice
from .types import ActivatorEndpoints, Endpoint, ObjectKey, Protocol

# A pod's port by the revision's protocol: the first of these names on the slice.
POD_PORTS = {Protocol.HTTP1: ("http", "http1"), Protocol.H2C: ("http2", "h2c")}

SliceSpec = Callable[[ObjectKey], EndpointSliceSpec | None]
RevisionSpecOf = Callable[[ObjectKey], RevisionSpec | None]


class EndpointIndex:
    def __init__(self, *, follow_public: bool) -> None:
        # Which slices count: the revisions' private ones, or (Knative's ServerlessService
        # in proxy mode) the public ones; the same choice the watch selectors make.
        self._follow_public = follow_public
        self._slices_of: defaultdict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self._slice_revision: dict[ObjectKey, ObjectKey] = {}
        self._activator_slices: set[ObjectKey] = set()
        # Ready addresses per revision, at the port chosen for its protocol.
        self.pods: dict[ObjectKey, tuple[Endpoint, ...]] = {}
        self.activator = ActivatorEndpoints()

    def index(self, key: ObjectKey, spec: EndpointSliceSpec | None) -> tuple[set[ObjectKey], bool]:
        """A slice was added, changed or deleted (None): the revisions it touched, and
        whether it touched the activator."""
        touched: set[ObjectKey] = set()
        activator = key in self._activator_slices
        self._activator_slices.discard(key)
        old = self._slice_revision.pop(key, None)
        if old is not None:
            self._slices_of[old].discard(key)
            touched.add(old)
        if spec is not None:
            if is_activator_slice(spec):
                self._activator_slices.add(key)
                activator = True
            elif spec.revision and spec.public == self._follow_public:
                rev = ObjectKey(key.namespace, spec.revision)
                self._slices_of[rev].add(key)
                self._slice_revision[key] = rev
                touched.add(rev)
        return touched, activator

    def refresh_pods(
        self, revisions: set[ObjectKey], slice_of: SliceSpec, revision_of: RevisionSpecOf
    ) -> set[ObjectKey]:
        """Recompute these revisions' ready addresses; return those that changed."""
        changed: set[ObjectKey] = set()
        for rev in revisions:
            spec = revision_of(rev)
            protocol = spec.revision.protocol if spec is not None else Protocol.HTTP1
            endpoints: set[Endpoint] = set()
            for slice_key in self._slices_of.get(rev) or ():
                s = slice_of(slice_key)
                if s is not None:
                    endpoints.update(s.endpoints(POD_PORTS[protocol]))
            value = tuple(sorted(endpoints))
            if self.pods.get(rev, ()) != value:
                changed.add(rev)
                if value:
                    self.pods[rev] = value
                else:
                    self.pods.pop(rev, None)
        return changed

    def refresh_activator(self, slice_of: SliceSpec) -> bool:
        """Recompute the activator's addresses (both ports); return whether they changed."""
        http: set[Endpoint] = set()
        h2c: set[Endpoint] = set()
        for key in self._activator_slices:
            spec = slice_of(key)
            if spec is not None:
                http.update(spec.endpoints(POD_PORTS[Protocol.HTTP1]))
                h2c.update(spec.endpoints(POD_PORTS[Protocol.H2C]))
        value = ActivatorEndpoints(http=tuple(sorted(http)), h2c=tuple(sorted(h2c)))
        changed = value != self.activator
        self.activator = value
        return changed
