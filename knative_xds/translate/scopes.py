"""Scoped routes: which Route's route table answers a host, chosen by the Host header.

Each listener picks a route table per request from a scope key built out of the
Host (`:authority`) header. Both listeners strip any port from it first
(`strip_any_host_port`, listeners.py), before the key is built and before route
matching, so `host:8080` finds the scope and virtual host of `host`. A scope
points at the owning Route's own route table, so editing a Route changes one
small table: Envoy re-applies only that, not every virtual host of the gateway
(DESIGN.md measured ~42 ms per push for one table of 5,000 hosts).

- External listener: a 1-fragment key, the whole host. One scope per host.
- HTTPS listener: a 3-fragment key, the whole host three times. One scope per
  public host of an Ingress with TLS; its own length keeps it apart from the
  external listener's scopes, so the two can name different tables (a plain
  HTTP one that redirects to https, and the one that serves).
- Internal listener: a 2-fragment key, the host's first two DNS labels, i.e.
  `(name, namespace)` for all three cluster-local forms (`name.ns`,
  `name.ns.svc`, `name.ns.svc.cluster.local`). One scope per cluster-local
  rule, not per host. A host that merely shares the two labels
  (`name.ns.bogus`) reaches the scope, then finds no virtual host in the
  Route's table (its domains are exact) and gets a 404. The resolver claims
  cluster-local hosts by this key, so no two Ingresses ever want one scope;
  an ExternalIP host answers here too, unless another Ingress holds its key.

Scopes arrive over SRDS as one wildcard set, and each listener receives all of
them. What keeps cluster-local hosts off the external listener is the key
length: a key only matches a key with as many fragments, and the external
listener builds one fragment, internal scopes have two.
"""

from __future__ import annotations

from envoy.config.route.v3 import scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from ..model.network import cluster_local_key
from ..resources import Resource
from .names import Listener, scope_name

_Fragment = hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder
_Extractor = _Fragment.HeaderValueExtractor

# The port is already stripped (listeners.py): the whole header is the host.
_HOST = _Fragment(header_value_extractor=_Extractor(name=":authority", index=0))
_FIRST_TWO_LABELS = [
    _Fragment(header_value_extractor=_Extractor(name=":authority", element_separator=".", index=i))
    for i in (0, 1)
]
_FRAGMENTS = {
    Listener.EXTERNAL: [_HOST],
    Listener.INTERNAL: _FIRST_TWO_LABELS,
    Listener.EXTERNAL_TLS: [_HOST, _HOST, _HOST],
}


def key_builder(listener: Listener) -> hcm.ScopedRoutes.ScopeKeyBuilder:
    return hcm.ScopedRoutes.ScopeKeyBuilder(fragments=_FRAGMENTS[listener])


def scope_key(listener: Listener, host: str) -> tuple[str, ...]:
    """What the listener's key builder makes of a request for `host` (any port)."""
    if listener is Listener.INTERNAL:
        return cluster_local_key(host)
    if listener is Listener.EXTERNAL_TLS:
        return (host, host, host)
    return (host,)


def scope_resource(listener: Listener, key: tuple[str, ...], route_table: str) -> Resource:
    key_msg = scoped_route_pb2.ScopedRouteConfiguration.Key
    msg = scoped_route_pb2.ScopedRouteConfiguration(
        name=scope_name(listener, key),
        route_configuration_name=route_table,
        key=key_msg(fragments=[key_msg.Fragment(string_key=f) for f in key]),
    )
    return Resource.of(msg, name=msg.name, refs=(route_table,))
