"""Knative Routes (with their Revisions and Configurations) → Ingresses.

The embedded default input. Each Route becomes the Ingress Knative's Route
controller would write as a KIngress: per traffic name (the Route's own, then
each tag), an ExternalIP rule with its public host (unless the Route is
cluster-local) and a cluster-local rule with its in-cluster names; splits to
the revisions, each setting `Knative-Serving-Revision` and
`Knative-Serving-Namespace` for the activator; with tag-header-based routing,
a path per tag matching `Knative-Serving-Tag` before the default one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from . import network as net
from .kinds import CONFIGURATION, REVISION, ROUTE, Ident
from .objects import ConfigurationSpec, ObjectError, RevisionSpec, RouteSpec
from .types import Backend, Ingress, ObjectKey, Path, Rule, Split, Visibility

REVISION_HEADER = "Knative-Serving-Revision"
NAMESPACE_HEADER = "Knative-Serving-Namespace"
TAG_HEADER = "Knative-Serving-Tag"

# The parsed object of a kind and key, or None.
Find = Callable[[str, ObjectKey], object]


def revision_cluster(key: ObjectKey) -> str:
    """`<namespace>/<revision>`: one cluster (and one endpoint set) per revision."""
    return f"{key.namespace}/{key.name}"


def route_ingress(
    spec: RouteSpec, network: net.NetworkConfig, find: Find, deps: set[Ident]
) -> Ingress:
    """The Route's Ingress; raises ObjectError naming the field of the first problem."""
    ns, name = spec.key.namespace, spec.key.name
    backends: dict[str, Backend] = {}
    targets: list[tuple[str, int, str | None]] = []
    for i, t in enumerate(spec.traffic):
        rev_name = _target_revision(ns, i, t.revision_name, t.configuration_name, find, deps)
        revision = _ready_revision(ns, i, rev_name, find, deps)
        targets.append((rev_name, t.percent, t.tag))
        if t.percent > 0 or t.tag:
            backends[rev_name] = _backend(revision)
    merged: dict[str, int] = defaultdict(int)
    for rev_name, percent, _ in targets:
        merged[rev_name] += percent
    splits = tuple(sorted(_split(ns, r, p) for r, p in merged.items() if p > 0))
    tags = sorted((tag, rev) for rev, _, tag in targets if tag)
    paths = [Path(splits)]
    if network.tag_header_routing:
        tag_paths = [
            Path((_split(ns, rev, 100),), match_headers=((TAG_HEADER, tag),)) for tag, rev in tags
        ]
        paths = [*tag_paths, *paths]
    # One domain for all of a Route's names (config-domain selects it by the Route's labels).
    domain = None if spec.cluster_local else network.domain_for(dict(spec.labels))
    rules = list(_rules(spec, network, domain, name, tuple(paths)))
    for tag, rev in tags:
        tagged = net.tag_name(network, name=name, tag=tag)
        rules.extend(_rules(spec, network, domain, tagged, (Path((_split(ns, rev, 100),)),)))
    return Ingress(
        key=spec.key,
        rules=tuple(rules),
        backends=tuple(backends[r] for r in sorted(backends)),
        kind=ROUTE,
    )


def _split(ns: str, revision: str, percent: int) -> Split:
    # The activator reads these to know which revision to wake; they overwrite, never append.
    headers = ((NAMESPACE_HEADER, ns), (REVISION_HEADER, revision))
    return Split(revision_cluster(ObjectKey(ns, revision)), percent, headers)


def _backend(revision: RevisionSpec) -> Backend:
    return Backend(
        name=revision_cluster(revision.key),
        protocol=revision.protocol,
        revision=revision.key,
        activator_always=revision.activator_always,
        timeout_seconds=revision.timeout_seconds,
    )


def _rules(
    spec: RouteSpec,
    network: net.NetworkConfig,
    domain: str | None,
    name: str,
    paths: tuple[Path, ...],
) -> Iterable[Rule]:
    """A traffic name's rules: public at `domain` (None: cluster-local only), and in-cluster."""
    ns = spec.key.namespace
    if domain is not None:
        host = net.external_host(network, name=name, namespace=ns, domain=domain)
        yield Rule(Visibility.EXTERNAL, (host,), paths)
    yield Rule(Visibility.CLUSTER_LOCAL, net.cluster_local_hosts(name, ns), paths)


def _target_revision(
    ns: str, i: int, revision: str | None, configuration: str | None, find: Find, deps: set[Ident]
) -> str:
    if revision:
        return revision
    assert configuration
    key = ObjectKey(ns, configuration)
    deps.add((CONFIGURATION, key))
    spec = find(CONFIGURATION, key)
    at = f"spec.traffic[{i}].configurationName"
    if not isinstance(spec, ConfigurationSpec):
        raise ObjectError(at, f"configuration {configuration!r} not found in namespace {ns!r}")
    if not spec.latest_ready_revision:
        raise ObjectError(at, f"configuration {configuration!r} has no ready revision yet")
    return spec.latest_ready_revision


def _ready_revision(ns: str, i: int, name: str, find: Find, deps: set[Ident]) -> RevisionSpec:
    key = ObjectKey(ns, name)
    deps.add((REVISION, key))
    spec = find(REVISION, key)
    at = f"spec.traffic[{i}]"
    if not isinstance(spec, RevisionSpec):
        raise ObjectError(at, f"revision {name!r} not found in namespace {ns!r}")
    if not spec.ready:
        raise ObjectError(at, f"revision {name!r} is not ready: {spec.reason}")
    return spec
