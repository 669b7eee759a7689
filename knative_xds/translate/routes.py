"""Ingress → its own route table on each listener, holding its virtual hosts.

An Ingress's hosts reach its tables through scopes (`scopes.py`), so a
one-Ingress edit rebuilds, sends and makes Envoy apply a few small tables,
never the gateway's whole set of virtual hosts. Tables per listener:

- external: its ExternalIP rules (each path answered with a 301 to https when
  `httpOption: Redirected`);
- internal: its cluster-local rules and its ExternalIP rules (but hosts another
  Ingress holds there: `Ingress.internal_shadowed`);
- external-tls: its ExternalIP rules, when it has TLS hosts.

Each path is a route, in order (first match wins): a prefix, exact header
matches, headers set before the split and host rewrite on the route, then a
weighted cluster per split setting its own headers. Split headers win over
path headers (`most_specific_header_mutations_wins`), as they are set after.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..model import HttpOption, Ingress, Path, Rule, Visibility
from ..model.types import Headers
from ..resources import Resource
from .names import Listener, route_table_name, virtual_host_name

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Envoy's default route timeout (15 s) would cut long requests; Knative wants none.
_NO_TIMEOUT = duration_pb2.Duration(seconds=0)
_REDIRECT = rc.RedirectAction(
    https_redirect=True, response_code=rc.RedirectAction.MOVED_PERMANENTLY
)


def _set(headers: Headers) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
        )
        for name, value in headers
    ]


def _action(path: Path, timeouts: dict[str, int]) -> rc.RouteAction:
    action = rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(
            clusters=[
                rc.WeightedCluster.ClusterWeight(
                    name=s.backend,
                    weight=wrappers_pb2.UInt32Value(value=s.percent),
                    request_headers_to_add=_set(s.headers),
                )
                for s in path.splits
            ]
        ),
        timeout=_NO_TIMEOUT,
    )
    if path.rewrite_host:
        action.host_rewrite_literal = path.rewrite_host
    # The stream idle timeout must not cut a request the revision still allows.
    idle = max((timeouts.get(s.backend, 0) for s in path.splits), default=0)
    if idle > 0:
        action.idle_timeout.CopyFrom(duration_pb2.Duration(seconds=idle))
    return action


def _match(path: Path) -> rc.RouteMatch:
    return rc.RouteMatch(
        prefix=path.prefix or "/",
        headers=[
            rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))
            for name, value in path.match_headers
        ],
    )


def route_name(path: Path) -> str:
    """A label for stats and config dumps: what the route matches."""
    parts = [path.prefix] if path.prefix else []
    parts += [f"{name}={value}" for name, value in path.match_headers]
    return " ".join(parts) or "default"


def _route(path: Path, timeouts: dict[str, int], redirect: bool) -> rc.Route:
    route = rc.Route(name=route_name(path), match=_match(path))
    if redirect:
        route.redirect.CopyFrom(_REDIRECT)
        return route
    route.route.CopyFrom(_action(path, timeouts))
    route.request_headers_to_add.extend(_set(path.headers))
    return route


def virtual_host(
    ingress: Ingress,
    rule: Rule,
    timeouts: dict[str, int],
    *,
    redirect: bool = False,
    skip: frozenset[str] = frozenset(),
    built: dict[tuple[int, bool], rc.Route] | None = None,
) -> rc.VirtualHost | None:
    """`built` holds the routes made so far for this Ingress: a Route's public and
    cluster-local rules share their paths, so each is made once."""
    hosts = [h for h in rule.hosts if h not in skip]
    if not hosts:
        return None
    routes = []
    for path in rule.paths:
        made = built.get((id(path), redirect)) if built is not None else None
        if made is None:
            made = _route(path, timeouts, redirect)
            if built is not None:
                built[(id(path), redirect)] = made
        routes.append(made)
    # Knative asks every host to answer with any port too (`host:*`).
    domains = [d for h in hosts for d in (h, f"{h}:*")]
    return rc.VirtualHost(
        name=virtual_host_name(ingress.key, hosts[0]), domains=domains, routes=routes
    )


def listener_rules(ingress: Ingress, listener: Listener) -> list[Rule]:
    """The rules an Ingress answers on one listener."""
    if listener is Listener.INTERNAL:
        return list(ingress.rules)
    if listener is Listener.EXTERNAL_TLS and not ingress.tls:
        return []
    return [r for r in ingress.rules if r.visibility is Visibility.EXTERNAL]


def route_tables(ingress: Ingress) -> tuple[Resource, ...]:
    """One RouteConfiguration per listener the Ingress has hosts on, named for it."""
    timeouts = {b.name: b.timeout_seconds for b in ingress.backends}
    # A public rule's virtual host is the same on every listener that serves it as is:
    # built once per rule (a Route's edit builds its public hosts once, not twice).
    built: dict[int, rc.VirtualHost | None] = {}
    routes: dict[tuple[int, bool], rc.Route] = {}
    tables = []
    for listener in Listener:
        rules = listener_rules(ingress, listener)
        redirect = listener is Listener.EXTERNAL and ingress.http_option is HttpOption.REDIRECTED
        skip = frozenset(ingress.internal_shadowed if listener is Listener.INTERNAL else ())
        vhosts = []
        for rule in rules:
            plain = not redirect and not skip.intersection(rule.hosts)
            if plain and id(rule) in built:
                vhost = built[id(rule)]
            else:
                vhost = virtual_host(
                    ingress, rule, timeouts, redirect=redirect, skip=skip, built=routes
                )
                if plain:
                    built[id(rule)] = vhost
            if vhost is not None:
                vhosts.append(vhost)
        if not vhosts:
            continue
        msg = route_pb2.RouteConfiguration(
            name=route_table_name(listener, ingress.key),
            virtual_hosts=vhosts,
            most_specific_header_mutations_wins=True,
        )
        clusters = (
            set() if redirect else {s.backend for r in rules for p in r.paths for s in p.splits}
        )
        tables.append(Resource.of(msg, name=msg.name, refs=clusters))
    return tuple(tables)
