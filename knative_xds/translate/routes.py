"""Route → its own route table on each listener, holding its virtual hosts.

A Route's hosts reach its table through scopes (`scopes.py`), so a one-Route
edit rebuilds, sends and makes Envoy apply one small table, never the
gateway's whole set of virtual hosts.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from ..model import HostRule, ObjectKey, Route, Split, Visibility
from ..resources import Resource
from .names import cluster_name, route_table_name, virtual_host_name

REVISION_HEADER = "Knative-Serving-Revision"
NAMESPACE_HEADER = "Knative-Serving-Namespace"
TAG_HEADER = "Knative-Serving-Tag"

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Envoy's default route timeout (15 s) would cut long requests; Knative wants none.
_NO_TIMEOUT = duration_pb2.Duration(seconds=0)


def _set_header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _cluster_weight(namespace: str, split: Split) -> rc.WeightedCluster.ClusterWeight:
    return rc.WeightedCluster.ClusterWeight(
        name=cluster_name(ObjectKey(namespace, split.revision)),
        weight=wrappers_pb2.UInt32Value(value=split.percent),
        # The activator reads these to know which revision to wake; overwrite, never append.
        request_headers_to_add=[
            _set_header(REVISION_HEADER, split.revision),
            _set_header(NAMESPACE_HEADER, namespace),
        ],
    )


def _route_action(
    namespace: str, splits: tuple[Split, ...], timeouts: dict[str, int]
) -> rc.RouteAction:
    action = rc.RouteAction(
        weighted_clusters=rc.WeightedCluster(
            clusters=[_cluster_weight(namespace, s) for s in splits]
        ),
        timeout=_NO_TIMEOUT,
    )
    # The stream idle timeout must not cut a request the revision still allows.
    idle = max((timeouts.get(s.revision, 0) for s in splits), default=0)
    if idle > 0:
        action.idle_timeout.CopyFrom(duration_pb2.Duration(seconds=idle))
    return action


def _tag_header_route(
    namespace: str, tag: str, revision: str, timeouts: dict[str, int]
) -> rc.Route:
    return rc.Route(
        name=f"tag:{tag}",
        match=rc.RouteMatch(
            prefix="/",
            headers=[
                rc.HeaderMatcher(name=TAG_HEADER, string_match=string_pb2.StringMatcher(exact=tag))
            ],
        ),
        route=_route_action(namespace, (Split(revision, 100),), timeouts),
    )


def virtual_host(route_key: ObjectKey, rule: HostRule, timeouts: dict[str, int]) -> rc.VirtualHost:
    ns = route_key.namespace
    routes = [_tag_header_route(ns, tag, rev, timeouts) for tag, rev in rule.tag_headers]
    routes.append(
        rc.Route(
            name="default",
            match=rc.RouteMatch(prefix="/"),
            route=_route_action(ns, rule.splits, timeouts),
        )
    )
    # Knative asks every host to answer with any port too (`host:*`).
    domains = [d for h in rule.hosts for d in (h, f"{h}:*")]
    return rc.VirtualHost(
        name=virtual_host_name(route_key, rule.name), domains=domains, routes=routes
    )


def _rule_clusters(namespace: str, rule: HostRule) -> frozenset[str]:
    revisions = {s.revision for s in rule.splits} | {rev for _, rev in rule.tag_headers}
    return frozenset(cluster_name(ObjectKey(namespace, r)) for r in revisions)


def route_tables(route: Route) -> tuple[Resource, ...]:
    """One RouteConfiguration per listener the Route has hosts on, named for the Route."""
    timeouts = {r.key.name: r.timeout_seconds for r in route.revisions}
    tables = []
    for visibility in Visibility:
        rules = [rule for rule in route.rules if rule.visibility is visibility]
        if not rules:
            continue
        msg = route_pb2.RouteConfiguration(
            name=route_table_name(visibility, route.key),
            virtual_hosts=[virtual_host(route.key, rule, timeouts) for rule in rules],
        )
        clusters = frozenset().union(*(_rule_clusters(route.key.namespace, r) for r in rules))
        tables.append(Resource.of(msg, name=msg.name, refs=clusters))
    return tuple(tables)
