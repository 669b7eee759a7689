"""KIngresses of our class (with their Services and Secrets) → Ingresses.

The input of Knative's networking layer. Each split's Service becomes a
backend: a revision's Service (label `serving.knative.dev/revision`) follows
the activator-or-pods rule like a Route's revision; an ExternalName Service is
resolved by Envoy over DNS; any other takes its EndpointSlices' ready
endpoints at the port the split names. Knative's probe (`InsertProbe`) is
applied here: every path gets a copy in front that also matches
`K-Network-Hash: override` and sets `K-Network-Hash: <hash of the spec>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .kinds import INGRESS, SECRET, SERVICE, Ident
from .kingress import IngressSpec, PathSpec, ServiceSpec, SplitSpec
from .objects import ObjectError
from .probe import HASH_HEADER, HASH_OVERRIDE
from .types import Backend, Certificate, Ingress, ObjectKey, Path, Rule, Split, Tls

CLUSTER_DOMAIN = "cluster.local"

Find = Callable[[str, ObjectKey], object]


def service_cluster(service: ObjectKey, port: int) -> str:
    """`<namespace>/<service>:<port>`: one cluster per Service port a KIngress names."""
    return f"{service.namespace}/{service.name}:{port}"


def kingress_ingress(spec: IngressSpec, find: Find, deps: set[Ident]) -> Ingress:
    """The KIngress's Ingress; raises ObjectError naming the field of the first problem."""
    backends: dict[str, Backend] = {}
    rules: list[Rule] = []
    for i, rule in enumerate(spec.rules):
        paths: list[Path] = []
        for j, path in enumerate(rule.paths):
            at = f"spec.rules[{i}].http.paths[{j}]"
            paths.append(_path(path, at, find, deps, backends))
        probes = [_probe(p, spec.hash) for p in paths]
        rules.append(Rule(rule.visibility, expanded_hosts(rule.hosts), (*probes, *paths)))
    tls: list[Tls] = []
    for i, t in enumerate(spec.tls):
        deps.add((SECRET, t.secret))
        if not isinstance(find(SECRET, t.secret), Certificate):
            raise ObjectError(
                f"spec.tls[{i}].secretName",
                f"secret {t.secret.name!r} not found in namespace {t.secret.namespace!r}"
                " (or it is not a valid kubernetes.io/tls Secret)",
            )
        tls.append(Tls(expanded_hosts(t.hosts), t.secret))
    return Ingress(
        key=spec.key,
        rules=tuple(rules),
        backends=tuple(backends[n] for n in sorted(backends)),
        tls=tuple(tls),
        http_option=spec.http_option,
        kind=INGRESS,
        generation=spec.generation,
    )


def _path(
    path: PathSpec, at: str, find: Find, deps: set[Ident], backends: dict[str, Backend]
) -> Path:
    splits: list[Split] = []
    for k, split in enumerate(path.splits):
        backend = _backend(split, f"{at}.splits[{k}]", find, deps)
        if split.percent > 0:  # a 0 % split gets nothing, and needs no cluster
            backends[backend.name] = backend
            splits.append(Split(backend.name, split.percent, split.headers))
    return Path(
        splits=tuple(splits),
        prefix=path.prefix,
        match_headers=path.match_headers,
        headers=path.headers,
        rewrite_host=path.rewrite_host,
    )


def _backend(split: SplitSpec, at: str, find: Find, deps: set[Ident]) -> Backend:
    deps.add((SERVICE, split.service))
    service = find(SERVICE, split.service)
    if not isinstance(service, ServiceSpec):
        raise ObjectError(
            f"{at}.serviceName",
            f"service {split.service.name!r} not found in namespace {split.service.namespace!r}",
        )
    port = service.port(split.port)
    if port is None:
        have = ", ".join(f"{p.name or '(unnamed)'}:{p.port}" for p in service.ports) or "none"
        raise ObjectError(
            f"{at}.servicePort",
            f"service {split.service.name!r} has no port {split.port!r} (it has {have})",
        )
    name = service_cluster(split.service, port.port)
    if service.external_name is not None:
        return Backend(name, port.protocol, dns=(service.external_name, port.port))
    if service.revision:
        revision = ObjectKey(split.service.namespace, service.revision)
        return Backend(name, port.protocol, revision=revision)
    return Backend(name, port.protocol, service=split.service, port_name=port.name)


def _probe(path: Path, hash_: str) -> Path:
    match = dict(path.match_headers)
    match[HASH_HEADER] = HASH_OVERRIDE
    headers = dict(path.headers)
    headers[HASH_HEADER] = hash_
    return Path(
        splits=path.splits,
        prefix=path.prefix,
        match_headers=tuple(sorted(match.items())),
        headers=tuple(sorted(headers.items())),
        rewrite_host=path.rewrite_host,
    )


def expanded_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """Knative's `ExpandedHosts`: a cluster-local name also answers without its
    `.cluster.local` and `.svc.cluster.local` suffixes (`name.ns.svc`, `name.ns`)."""
    out: dict[str, None] = {}
    for host in hosts:
        for suffix in ("", f".{CLUSTER_DOMAIN}", f".svc.{CLUSTER_DOMAIN}"):
            if suffix and not host.endswith(suffix):
                continue
            short = host[: len(host) - len(suffix)] if suffix else host
            if _valid_top_level(short):
                out[short] = None
    return tuple(out)


def _valid_top_level(domain: str) -> bool:
    tld = domain.rsplit(".", 1)[-1]
    return len(tld) <= 63 and any(c == "-" or c > "9" for c in tld)
