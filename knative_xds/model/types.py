"""The desired state, as frozen values.

Everything here is already resolved and validated: a Route names concrete
revisions and carries the hosts it answers on. Translation reads these values
and nothing else, so equal values always translate to equal Envoy resources,
which is what lets translation be memoized per object.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from immutables import Map


class Visibility(enum.Enum):
    """Which listener answers a host: Knative's ExternalIP vs ClusterLocal."""

    EXTERNAL = "external"
    CLUSTER_LOCAL = "cluster-local"


class Protocol(enum.Enum):
    """Upstream protocol of a revision; a container port named `h2c` selects HTTP/2."""

    HTTP1 = "http1"
    H2C = "h2c"


class ActivatorMode(enum.Enum):
    """When a revision's traffic goes through the activator.

    AT_ZERO is Knative's default behaviour seen from the ingress: the activator
    only while no pod is ready. ALWAYS keeps it in the path (Knative's
    `target-burst-capacity: -1`), so it can buffer bursts above zero too.
    """

    AT_ZERO = "at-zero"
    ALWAYS = "always"


class ObjectKey(NamedTuple):
    """Identity of a namespaced object; `ns/name` in every name we emit.

    A named tuple, not a dataclass: it keys most maps of the model, and a tuple's
    hashing, equality and order run in C (a first load hashes keys ~400,000 times).
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Revision:
    """What the data plane needs of a Knative Revision."""

    key: ObjectKey
    protocol: Protocol = Protocol.HTTP1
    timeout_seconds: int = 300
    # Knative's `autoscaling.knative.dev/target-burst-capacity: "-1"` pins the activator.
    activator_always: bool = False


@dataclass(frozen=True, slots=True, order=True)
class Split:
    """One weighted share of a host's traffic. Percent is 1..100; 0 % shares are dropped."""

    revision: str
    percent: int


@dataclass(frozen=True, slots=True)
class HostRule:
    """A set of hosts on one listener and where their traffic goes.

    `tag_headers` maps a `Knative-Serving-Tag` header value to a revision; it is
    only filled on a Route's main rule when tag-header-based routing is on.
    """

    visibility: Visibility
    hosts: tuple[str, ...]
    splits: tuple[Split, ...]
    tag_headers: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.hosts[0]


@dataclass(frozen=True, slots=True)
class Route:
    """A valid Knative Route, resolved to revisions and hosts.

    It embeds the Revisions it routes to, so a Route kept at its last good
    version after a bad edit still brings its clusters along.
    """

    key: ObjectKey
    rules: tuple[HostRule, ...]
    revisions: tuple[Revision, ...]


@dataclass(frozen=True, slots=True)
class ActivatorEndpoints:
    """The activator's ready addresses: port `http` (8012) and `http2` (8013)."""

    http: tuple[Endpoint, ...] = ()
    h2c: tuple[Endpoint, ...] = ()

    def for_protocol(self, protocol: Protocol) -> tuple[Endpoint, ...]:
        return self.h2c if protocol is Protocol.H2C else self.http


def _frozen_map(value: Mapping) -> Map:
    # A persistent map: the resolver derives each State from the last by setting only
    # what changed, sharing the rest, so an edit does not copy every Route.
    return value if isinstance(value, Map) else Map(value)


@dataclass(frozen=True, slots=True)
class State:
    """One complete, consistent desired state: what every gateway should serve."""

    routes: Mapping[ObjectKey, Route] = field(default_factory=dict)
    # Ready pod endpoints per revision, the port already chosen for its protocol.
    pods: Mapping[ObjectKey, tuple[Endpoint, ...]] = field(default_factory=dict)
    activator: ActivatorEndpoints = ActivatorEndpoints()
    activator_mode: ActivatorMode = ActivatorMode.AT_ZERO

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", _frozen_map(self.routes))
        object.__setattr__(self, "pods", _frozen_map(self.pods))

    def revisions(self) -> dict[ObjectKey, Revision]:
        """Every revision some served Route sends traffic to (or names by tag)."""
        out: dict[ObjectKey, Revision] = {}
        for route in self.routes.values():
            for revision in route.revisions:
                out[revision.key] = revision
        return out


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """A reason an object could not be used, naming where it came from and which field."""

    origin: str
    kind: str
    key: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        at = f" {self.field}:" if self.field else ""
        return f"{where}{self.kind} {self.key}:{at} {self.message}"
