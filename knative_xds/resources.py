"""An Envoy resource as the control plane holds it: serialized once, hashed once.

Translation produces `Resource`s, the cache versions them and the server sends
them. The bytes (and the framed pieces of a DiscoveryResponse built from them)
are computed at most once per content and shared by every stream, because
serialization dominates CPU when many gateways are connected.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Make-before-break: a cluster exists (and has endpoints) before a route uses it.
# Removals go the other way, which the server achieves by keeping a removed
# cluster until no route the client holds still refers to it.
# Certificates (SDS) come before the HTTPS listener that names them.
# Scopes come before the route tables they name: Envoy asks for a table once it
# sees the scope, and the table then waits for its clusters (server/plan.py).
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, LISTENER, SCOPED_ROUTE, ROUTE)

# LDS, CDS and SRDS are wildcard, full-state types: a SotW response carries all of them.
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER, SCOPED_ROUTE})

SHORT_NAMES = {
    LISTENER: "LDS",
    ROUTE: "RDS",
    SCOPED_ROUTE: "SRDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SECRET: "SDS",
}


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.removeprefix(_PREFIX))


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    # Lengths of our resources fit in one or two bytes: those skip the loop (cold start
    # frames some 90,000 resources, twice each).
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2): tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


# Field numbers in envoy.service.discovery.v3 and google.protobuf.Any.
_ANY_TYPE_URL, _ANY_VALUE = 1, 2
_RESPONSE_RESOURCES = 2  # DiscoveryResponse.resources and DeltaDiscoveryResponse.resources
_RESOURCE_VERSION, _RESOURCE_ANY, _RESOURCE_NAME = 1, 2, 3  # discovery.v3.Resource


@functools.cache
def _any_head(type_url: str) -> bytes:
    """An Any's type_url field and its value field's tag: the same for every resource of a type."""
    return _field(_ANY_TYPE_URL, type_url.encode()) + _varint(_ANY_VALUE << 3 | 2)


@dataclass(frozen=True, slots=True, eq=False)
class Resource:
    """One named resource of one type, immutable once built.

    It keeps its bytes once, already framed as a `resources` entry of a SotW
    DiscoveryResponse: serialized messages concatenate into a merged message
    (repeated fields append), so a response is these entries joined after a
    small header, and no stream ever re-serializes a resource.

    `version` is a hash of the content, so equal content has equal versions
    across restarts and across server instances. `refs` names the resources of
    the next type down that this one needs (a route table's clusters), sorted,
    each once; the server uses them to order adds and removals.

    Some 60,000 are alive with 10,000 revisions, so each field is kept small:
    `refs` is a tuple (the empty one is shared, a frozenset costs ~200 bytes
    even with one name), `type_url` is one shared string per type, and the
    Delta entry is a slot set on first use rather than a list per resource.
    """

    type_url: str
    name: str
    version: str
    refs: tuple[str, ...]
    sotw_entry: bytes
    _delta: bytes | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(cls, message: Message, *, name: str, refs: Iterable[str] = ()) -> Resource:
        body = message.SerializeToString(deterministic=True)
        type_url = sys.intern(_PREFIX + message.DESCRIPTOR.full_name)
        packed = _any_head(type_url) + _varint(len(body)) + body
        return cls(
            type_url=type_url,
            name=name,
            version=content_hash(body),
            refs=tuple(sorted(set(refs))),
            sotw_entry=_field(_RESPONSE_RESOURCES, packed),
        )

    def _packed(self) -> bytes:
        """The serialized Any inside the entry (the entry's own tag and length stripped)."""
        view = memoryview(self.sotw_entry)
        i = 1
        while view[i] & 0x80:
            i += 1
        return bytes(view[i + 1 :])

    @property
    def delta_entry(self) -> bytes:
        """This resource as one `resources` entry of a serialized DeltaDiscoveryResponse.

        Built on first use (only Delta streams need it) and kept: the one write
        to this frozen instance, of a value that follows from its other fields.
        """
        if self._delta is None:
            wrapped = (
                _field(_RESOURCE_VERSION, self.version.encode())
                + _field(_RESOURCE_ANY, self._packed())
                + _field(_RESOURCE_NAME, self.name.encode())
            )
            object.__setattr__(self, "_delta", _field(_RESPONSE_RESOURCES, wrapped))
        return self._delta

    @property
    def body(self) -> bytes:
        """The serialized resource itself (for tests and debug views, not the push path)."""
        return any_pb2.Any.FromString(self._packed()).value

    def to_any(self) -> any_pb2.Any:
        """The resource as the Any a response carries (for debug views, not the push path)."""
        return any_pb2.Any.FromString(self._packed())

    def message(self, cls: type[Message]) -> Message:
        """Decode the resource (for tests and debug views; never on the push path)."""
        return cls.FromString(self.body)
