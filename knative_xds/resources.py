"""An Envoy resource as the control plane holds it: serialized once, hashed once.

Translation produces `Resource`s, the cache versions them and the server sends
them. The bytes (and the framed pieces of a DiscoveryResponse built from them)
are computed at most once per content and shared by every stream, because
serialization dominates CPU when many gateways are connected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

# Make-before-break: a cluster exists (and has endpoints) before a route uses it.
# Removals go the other way, which the server achieves by keeping a removed
# cluster until no route the client holds still refers to it.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# LDS and CDS are wildcard, full-state types: a SotW response carries all of them.
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER})

SHORT_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS"}


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.removeprefix(_PREFIX))


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass(frozen=True, eq=False)
class Resource:
    """One named resource of one type, immutable once built.

    `version` is a hash of the content, so equal content has equal versions
    across restarts and across server instances. `refs` names the resources of
    the next type down that this one needs (a route table's clusters), which
    the server uses to order adds and removals.
    """

    type_url: str
    name: str
    body: bytes
    version: str
    refs: frozenset[str] = field(default=frozenset())

    @classmethod
    def of(cls, message: Message, *, name: str, refs: Iterable[str] = ()) -> Resource:
        body = message.SerializeToString(deterministic=True)
        return cls(
            type_url=_PREFIX + message.DESCRIPTOR.full_name,
            name=name,
            body=body,
            version=content_hash(body),
            refs=frozenset(refs),
        )

    @cached_property
    def sotw_entry(self) -> bytes:
        """This resource as one `resources` entry of a serialized DiscoveryResponse.

        Serialized messages concatenate into a merged message (repeated fields
        append), so a response is these entries joined plus a small header.
        """
        packed = any_pb2.Any(type_url=self.type_url, value=self.body)
        return discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()

    @cached_property
    def delta_entry(self) -> bytes:
        """This resource as one `resources` entry of a serialized DeltaDiscoveryResponse."""
        packed = any_pb2.Any(type_url=self.type_url, value=self.body)
        wrapped = discovery_pb2.Resource(name=self.name, version=self.version, resource=packed)
        return discovery_pb2.DeltaDiscoveryResponse(resources=[wrapped]).SerializeToString()

    def message(self, cls: type[Message]) -> Message:
        """Decode the body (for tests and debug views; never on the push path)."""
        return cls.FromString(self.body)
