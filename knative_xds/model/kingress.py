"""Knative's KIngress and the core objects it names (Service, Secret), parsed one at a time.

A KIngress (`networking.internal.knative.dev/v1alpha1` Ingress) is what
Knative's Route and DomainMapping controllers write for the networking layer.
Parsing applies Knative's own per-object validation (ingress_validation.go);
that a Service exists, and which port it means, is resolution (resolve.py).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import probe
from .kinds import INGRESS_CLASS_ANNOTATION, REVISION_LABEL
from .objects import ObjectError, RawObject, dns_subdomain_error, get, in_list, string_map
from .types import Certificate, Headers, HttpOption, ObjectKey, Protocol, Visibility

VISIBILITIES = {"ExternalIP": Visibility.EXTERNAL, "ClusterLocal": Visibility.CLUSTER_LOCAL}
HTTP_OPTIONS = {
    "": HttpOption.ENABLED,
    "Enabled": HttpOption.ENABLED,
    "Redirected": HttpOption.REDIRECTED,
}
H2C_PORT_NAMES = ("http2", "h2c")
H2C_APP_PROTOCOL = "kubernetes.io/h2c"


@dataclass(frozen=True, slots=True)
class SplitSpec:
    service: ObjectKey
    port: int | str  # a Service port number, or its name
    percent: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class PathSpec:
    splits: tuple[SplitSpec, ...]
    prefix: str
    match_headers: Headers
    headers: Headers
    rewrite_host: str


@dataclass(frozen=True, slots=True)
class RuleSpec:
    visibility: Visibility
    hosts: tuple[str, ...]
    paths: tuple[PathSpec, ...]


@dataclass(frozen=True, slots=True)
class TlsSpec:
    hosts: tuple[str, ...]
    secret: ObjectKey


@dataclass(frozen=True, slots=True)
class IngressSpec:
    key: ObjectKey
    generation: int
    ingress_class: str
    rules: tuple[RuleSpec, ...]
    tls: tuple[TlsSpec, ...]
    http_option: HttpOption
    # Knative's probe hash of this spec: every path also answers `K-Network-Hash: override`
    # with it, so a prober can tell that the gateway serves this generation.
    hash: str


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    key: ObjectKey
    ports: tuple[ServicePort, ...]
    external_name: str | None
    revision: str | None  # Knative's revision label: the activator-or-pods rule applies

    def port(self, wanted: int | str) -> ServicePort | None:
        for p in self.ports:
            if (p.port if isinstance(wanted, int) else p.name) == wanted:
                return p
        return None


def ingress_class(raw: RawObject) -> str:
    return raw.annotations.get(INGRESS_CLASS_ANNOTATION, "")


def parse_ingress(raw: RawObject) -> IngressSpec:
    spec = get(raw.body, "spec", Mapping, None)
    if spec is None:
        raise ObjectError("spec", "is missing")
    rules_raw = get(spec, "rules", list, [])
    if not rules_raw:
        raise ObjectError("spec.rules", "must list at least one rule")
    ns = raw.key.namespace
    rules = tuple(
        in_list(f"spec.rules[{i}]", rule, lambda r: _rule(ns, r))
        for i, rule in enumerate(rules_raw)
    )
    tls = tuple(
        in_list(f"spec.tls[{i}]", t, _tls) for i, t in enumerate(get(spec, "tls", list, []))
    )
    option = get(spec, "httpOption", str, "")
    if option not in HTTP_OPTIONS:
        raise ObjectError("spec.httpOption", f"must be Enabled or Redirected, got {option!r}")
    generation = get(raw.body, "metadata.generation", int, 0)
    return IngressSpec(
        key=raw.key,
        generation=generation,
        ingress_class=ingress_class(raw),
        rules=rules,
        tls=tls,
        http_option=HTTP_OPTIONS[option],
        hash=probe.compute_hash(spec, ns, raw.key.name),
    )


def _rule(ns: str, rule: Mapping[str, Any]) -> RuleSpec:
    hosts = tuple(_strings(rule, "hosts"))
    if not hosts:
        raise ObjectError("hosts", "must list at least one host")
    for i, host in enumerate(hosts):
        # A wildcard's `*.` aside, a host is a DNS name: Envoy rejects the whole table otherwise.
        why = dns_subdomain_error(host.removeprefix("*."))
        if why is not None:
            raise ObjectError(f"hosts[{i}]", why)
    # Knative defaults an empty visibility to ExternalIP (ingress_defaults.go).
    visibility = get(rule, "visibility", str, "") or "ExternalIP"
    if visibility not in VISIBILITIES:
        raise ObjectError("visibility", f"must be ExternalIP or ClusterLocal, got {visibility!r}")
    paths_raw = get(rule, "http.paths", list, [])
    if not paths_raw:
        raise ObjectError("http.paths", "must list at least one path")
    paths = tuple(
        in_list(f"http.paths[{i}]", p, lambda p: _path(ns, p)) for i, p in enumerate(paths_raw)
    )
    return RuleSpec(VISIBILITIES[visibility], hosts, paths)


def _path(ns: str, path: Mapping[str, Any]) -> PathSpec:
    splits_raw = get(path, "splits", list, [])
    if not splits_raw:
        raise ObjectError("splits", "must list at least one split")
    splits = [in_list(f"splits[{i}]", s, lambda s: _split(ns, s)) for i, s in enumerate(splits_raw)]
    total = sum(s.percent for s in splits)
    if len(splits) == 1 and total == 0:
        splits = [SplitSpec(splits[0].service, splits[0].port, 100, splits[0].headers)]
    elif total != 100:
        raise ObjectError("splits", f"percents must total 100, they total {total}")
    prefix = get(path, "path", str, "")
    if prefix and not prefix.startswith("/"):
        raise ObjectError("path", f"must start with '/', got {prefix!r}")
    headers = get(path, "headers", Mapping, {})
    matches: list[tuple[str, str]] = []
    for name, match in sorted(headers.items()):
        exact = get(match, "exact", str, None) if isinstance(match, Mapping) else None
        if exact is None:
            raise ObjectError(f"headers.{name}", "must be {exact: VALUE}")
        matches.append((str(name), exact))
    return PathSpec(
        splits=tuple(splits),
        prefix=prefix,
        match_headers=tuple(matches),
        headers=_header_map(path, "appendHeaders"),
        rewrite_host=get(path, "rewriteHost", str, ""),
    )


def _split(ns: str, split: Mapping[str, Any]) -> SplitSpec:
    service_ns = get(split, "serviceNamespace", str, "")
    if not service_ns:
        raise ObjectError("serviceNamespace", "is required")
    if service_ns != ns:
        raise ObjectError("serviceNamespace", f"must be the Ingress's namespace {ns!r}")
    name = get(split, "serviceName", str, "")
    if not name:
        raise ObjectError("serviceName", "is required")
    port = split.get("servicePort")
    if isinstance(port, bool) or not isinstance(port, int | str) or port in (0, ""):
        raise ObjectError("servicePort", f"must be a port number or name, got {port!r}")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    percent = get(split, "percent", int, 0)
    if not 0 <= percent <= 100:
        raise ObjectError("percent", f"must be between 0 and 100, got {percent}")
    return SplitSpec(ObjectKey(ns, name), port, percent, _header_map(split, "appendHeaders"))


def _tls(tls: Mapping[str, Any]) -> TlsSpec:
    name = get(tls, "secretName", str, "")
    ns = get(tls, "secretNamespace", str, "")
    if not name:
        raise ObjectError("secretName", "is required")
    if not ns:
        raise ObjectError("secretNamespace", "is required")
    return TlsSpec(tuple(_strings(tls, "hosts")), ObjectKey(ns, name))


def _strings(obj: Mapping[str, Any], path: str) -> list[str]:
    values = get(obj, path, list, [])
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise ObjectError(f"{path}[{i}]", f"must be a non-empty string, got {v!r}")
    return [v.lower() for v in values]


def _header_map(obj: Mapping[str, Any], path: str) -> Headers:
    return tuple(sorted(string_map(obj, path).items()))


# -- what a KIngress names ------------------------------------------------------------


def parse_service(raw: RawObject) -> ServiceSpec:
    ports: list[ServicePort] = []
    for i, p in enumerate(get(raw.body, "spec.ports", list, [])):
        if not isinstance(p, Mapping):
            raise ObjectError(f"spec.ports[{i}]", f"must be a mapping, got {p!r}")
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            raise ObjectError(f"spec.ports[{i}].port", f"must be a port number, got {number!r}")
        name = str(p.get("name") or "")
        h2c = name in H2C_PORT_NAMES or p.get("appProtocol") == H2C_APP_PROTOCOL
        ports.append(ServicePort(name, number, Protocol.H2C if h2c else Protocol.HTTP1))
    external = None
    if get(raw.body, "spec.type", str, "") == "ExternalName":
        external = get(raw.body, "spec.externalName", str, "")
        if not external:
            raise ObjectError("spec.externalName", "is required for type ExternalName")
    return ServiceSpec(raw.key, tuple(ports), external, raw.labels.get(REVISION_LABEL))


def parse_secret(raw: RawObject) -> Certificate:
    data = string_map(raw.body, "data")
    chain, key = (_pem(data, name) for name in ("tls.crt", "tls.key"))
    return Certificate(raw.key, chain, key)


def _pem(data: Mapping[str, str], name: str) -> bytes:
    value = data.get(name)
    if not value:
        raise ObjectError(f"data.{name}", "is required for a TLS certificate")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ObjectError(f"data.{name}", "is not base64 (as Kubernetes Secret data is)") from None
    if b"-----BEGIN" not in decoded:
        raise ObjectError(f"data.{name}", "is not PEM")
    return decoded
