"""Knative's own object shapes, parsed one object at a time.

A source hands over raw objects (dicts as the API server or a YAML file has
them). Each is parsed on its own here, with Knative's per-object validation
rules; an error names the field, and the caller decides what to keep serving.
Rules that need more than one object (a target's revision exists and is ready)
live in `resolve.py`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import marshal
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .kinds import (
    ACTIVATOR_SERVICE,
    BURST_CAPACITY_ANNOTATION,
    KNATIVE_NAMESPACE,
    REVISION_LABEL,
    SERVICE_NAME_LABEL,
    SERVICE_TYPE_LABEL,
    VISIBILITY_LABEL,
)
from .types import Endpoint, ObjectKey, Protocol

T = TypeVar("T")

# RFC 1035 label, as Knative validates tags.
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# RFC 1123 label and subdomain, as Kubernetes validates names (apimachinery's IsDNS1123*).
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
# Kinds whose names Knative or Kubernetes require to be one DNS label (they become a
# host's first label or a Service's DNS name); other names are DNS subdomains.
_LABEL_NAMED = frozenset({"Route", "Revision", "Configuration", "Service"})


def fingerprint(body: Mapping[str, Any]) -> bytes:
    """A short digest of an object's content, to tell an edited object from an untouched one.

    Sources and the resolver keep this instead of the object: at 10,000 revisions
    the parsed YAML would be the largest thing in memory, and a change only needs
    to be detected. `marshal` is C-fast and covers exactly JSON/YAML value types.
    """
    return hashlib.blake2b(marshal.dumps(body), digest_size=16).digest()


class ObjectError(ValueError):
    """An object that breaks a rule; `field` is a JSON path inside the object."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class RawObject:
    """One Kubernetes-shaped object and where it came from (a file, the API server)."""

    kind: str
    api_version: str
    key: ObjectKey
    body: Mapping[str, Any]
    origin: str = ""
    _digest: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def digest(self) -> bytes:
        """`fingerprint(body)`, computed once: the source and the resolver both ask."""
        if self._digest is None:
            object.__setattr__(self, "_digest", fingerprint(self.body))
        return self._digest

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], origin: str = "") -> RawObject:
        """An object as `kubectl get -o yaml` prints it; the namespace defaults to `default`.

        The caller has checked it has `kind` and `metadata.name` (the file source
        reports those that do not).
        """
        meta = body["metadata"]
        return cls(
            kind=str(body["kind"]),
            api_version=str(body.get("apiVersion", "")),
            key=ObjectKey(str(meta.get("namespace") or "default"), str(meta["name"])),
            body=body,
            origin=origin,
        )

    @property
    def labels(self) -> Mapping[str, str]:
        """`metadata.labels`; raises ObjectError when it is not a map of strings."""
        return string_map(self.body, "metadata.labels")

    @property
    def annotations(self) -> Mapping[str, str]:
        """`metadata.annotations`; raises ObjectError when it is not a map of strings."""
        return string_map(self.body, "metadata.annotations")

    @property
    def ident(self) -> tuple[str, ObjectKey]:
        return (self.kind, self.key)


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    revision_name: str | None
    configuration_name: str | None
    percent: int
    tag: str | None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    key: ObjectKey
    labels: tuple[tuple[str, str], ...]
    traffic: tuple[TrafficSpec, ...]

    @property
    def cluster_local(self) -> bool:
        return dict(self.labels).get(VISIBILITY_LABEL) == "cluster-local"


@dataclass(frozen=True, slots=True)
class RevisionSpec:
    """What the data plane needs of a Knative Revision."""

    key: ObjectKey
    protocol: Protocol = Protocol.HTTP1
    timeout_seconds: int = 300
    # Knative's `autoscaling.knative.dev/target-burst-capacity: "-1"` pins the activator.
    activator_always: bool = False
    ready: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConfigurationSpec:
    key: ObjectKey
    latest_ready_revision: str | None


@dataclass(frozen=True, slots=True)
class EndpointSliceSpec:
    """Ready addresses of one EndpointSlice and its ports by name."""

    key: ObjectKey
    revision: str | None
    service_name: str
    public: bool
    addresses: tuple[str, ...]
    ports: tuple[tuple[str, int], ...]

    def endpoints(self, port_names: tuple[str, ...]) -> tuple[Endpoint, ...]:
        """Addresses at the first port whose name is in `port_names` (else the first port)."""
        by_name = dict(self.ports)
        port = next((by_name[n] for n in port_names if n in by_name), None)
        if port is None and self.ports:
            port = self.ports[0][1]
        if port is None:
            return ()
        return tuple(Endpoint(a, port) for a in self.addresses)


# -- names and hosts, as Kubernetes and Knative validate them -------------------------


def dns_label_error(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label, or None when it is one."""
    if not value:
        return "must not be empty"
    if len(value) > LABEL_MAX:
        return f"is {len(value)} characters, over the {LABEL_MAX} a DNS label may have"
    if not _DNS1123_LABEL.match(value):
        return (
            f"{_shown(value)} is not a DNS-1123 label (lower case letters, digits and '-',"
            " starting and ending with a letter or digit)"
        )
    return None


def dns_subdomain_error(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (dot-separated labels), or None."""
    if not value:
        return "must not be empty"
    if len(value) > SUBDOMAIN_MAX:
        return f"is {len(value)} characters, over the {SUBDOMAIN_MAX} a DNS name may have"
    for label in value.split("."):
        why = dns_label_error(label)
        if why is not None:
            return (
                f"{_shown(value)}: label {_shown(label)} {why}"
                if label
                else (f"{_shown(value)} has an empty label (two dots, or a dot at an end)")
            )
    return None


def check_key(raw: RawObject) -> None:
    """The object's namespace and name as Kubernetes would have admitted them.

    A file can hold anything: a CRLF in a name ends up in a route name Envoy
    rejects (and NACKs the whole table), a space or `/..` in a namespace in a
    cluster name. Raises ObjectError on `metadata.namespace` or `metadata.name`.
    """
    why = dns_label_error(raw.key.namespace)
    if why is not None:
        raise ObjectError("metadata.namespace", why)
    name = raw.key.name
    why = dns_label_error(name) if raw.kind in _LABEL_NAMED else dns_subdomain_error(name)
    if why is not None:
        raise ObjectError("metadata.name", why)


def _shown(value: str) -> str:
    """A value for an error message: quoted with escapes, and cut when it is long."""
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} characters)"


# -- small typed getters that name the field on error ---------------------------------


def get(obj: Mapping[str, Any], path: str, want: type, default: Any = None) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not _is_mapping(value):
            return default
        value = value.get(part)
        if value is None:
            return default
    if want is int and isinstance(value, bool):
        raise ObjectError(path, f"must be an integer, got {value!r}")
    if not (_is_mapping(value) if want is Mapping else isinstance(value, want)):
        raise ObjectError(path, f"must be {_type_word(want)}, got {value!r}")
    return value


def in_list(at: str, item: Any, parse: Callable[[Mapping[str, Any]], T]) -> T:
    """Parse one item of a list of mappings; an error names its place (`at`) in the object."""
    if not isinstance(item, Mapping):
        raise ObjectError(at, f"must be a mapping, got {item!r}")
    try:
        return parse(item)
    except ObjectError as e:
        raise ObjectError(f"{at}.{e.field}" if e.field else at, e.message) from None


def _is_mapping(value: Any) -> bool:
    # Parsed YAML and JSON are dicts: checking that first skips the slow ABC check,
    # which a first load of 25,000 objects would make 300,000 times.
    return isinstance(value, (dict, Mapping))


_WORDS = {str: "a string", int: "an integer", list: "a list", Mapping: "a mapping"}


def string_map(obj: Mapping[str, Any], path: str) -> dict[str, str]:
    """A map of strings (labels, annotations, ConfigMap data), read without trusting it.

    A hand-written file can put anything there; a list or a nested map must be
    a Problem on that field, not an exception that stops the resolver. Scalars
    are read as strings, as a YAML `replicas: 1` would be meant.
    """
    value = get(obj, path, Mapping, {})
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, Mapping | list):
            raise ObjectError(f"{path}.{k}", f"must be a string, got {v!r}")
        out[str(k)] = "" if v is None else str(v)
    return out


def _type_word(want: type) -> str:
    return _WORDS.get(want, f"a {want.__name__}")


# -- the kinds we read -----------------------------------------------------------------


def parse_route(raw: RawObject) -> RouteSpec:
    traffic_raw = get(raw.body, "spec.traffic", list, [])
    if not traffic_raw:
        raise ObjectError("spec.traffic", "must list at least one traffic target")
    targets = tuple(_parse_target(i, t) for i, t in enumerate(traffic_raw))
    _check_traffic(targets)
    labels = tuple(sorted((str(k), str(v)) for k, v in raw.labels.items()))
    return RouteSpec(key=raw.key, labels=labels, traffic=targets)


def _parse_target(index: int, target: Any) -> TrafficSpec:
    at = f"spec.traffic[{index}]"
    if not isinstance(target, Mapping):
        raise ObjectError(at, f"must be a mapping, got {target!r}")
    try:
        revision = get(target, "revisionName", str)
        configuration = get(target, "configurationName", str)
        percent = get(target, "percent", int, 0)
        tag = get(target, "tag", str)
        latest = target.get("latestRevision")
    except ObjectError as e:
        raise ObjectError(f"{at}.{e.field}", e.message) from None
    if bool(revision) == bool(configuration):
        raise ObjectError(at, "set exactly one of revisionName and configurationName")
    for field_name, value in (("revisionName", revision), ("configurationName", configuration)):
        why = dns_label_error(value) if value else None
        if why is not None:
            raise ObjectError(f"{at}.{field_name}", why)
    if latest is not None and not isinstance(latest, bool):
        raise ObjectError(f"{at}.latestRevision", f"must be true or false, got {latest!r}")
    if revision and latest is True:
        raise ObjectError(f"{at}.latestRevision", "may not be true with revisionName")
    if configuration and latest is False:
        raise ObjectError(f"{at}.latestRevision", "may not be false with configurationName")
    if not 0 <= percent <= 100:
        raise ObjectError(f"{at}.percent", f"must be between 0 and 100, got {percent}")
    if tag is not None and (len(tag) > LABEL_MAX or not _DNS1035.match(tag)):
        raise ObjectError(
            f"{at}.tag",
            f"{_shown(tag)} is not a DNS-1035 label (lower case, digits, '-', at most 63)",
        )
    return TrafficSpec(revision, configuration, percent, tag)


def _check_traffic(targets: tuple[TrafficSpec, ...]) -> None:
    total = sum(t.percent for t in targets)
    if total != 100:
        raise ObjectError("spec.traffic", f"percents must sum to 100, they sum to {total}")
    seen: set[str] = set()
    for i, t in enumerate(targets):
        if t.tag is None:
            continue
        if t.tag in seen:
            raise ObjectError(f"spec.traffic[{i}].tag", f"tag {t.tag!r} is used twice")
        seen.add(t.tag)


def parse_revision(raw: RawObject) -> RevisionSpec:
    containers = get(raw.body, "spec.containers", list, [])
    protocol = Protocol.HTTP1
    if containers:
        ports = get(containers[0], "ports", list, []) if isinstance(containers[0], Mapping) else []
        if ports and isinstance(ports[0], Mapping) and ports[0].get("name") == "h2c":
            protocol = Protocol.H2C
    timeout = get(raw.body, "spec.timeoutSeconds", int, 300)
    if timeout < 0:
        raise ObjectError("spec.timeoutSeconds", f"must not be negative, got {timeout}")
    burst = str(raw.annotations.get(BURST_CAPACITY_ANNOTATION, "")).strip()
    ready, reason = _ready_condition(raw.body)
    return RevisionSpec(
        key=raw.key,
        protocol=protocol,
        timeout_seconds=timeout,
        activator_always=burst in ("-1", "-1.0"),
        ready=ready,
        reason=reason,
    )


def _ready_condition(body: Mapping[str, Any]) -> tuple[bool, str]:
    """Knative's Ready condition. A revision with no status yet counts as ready:
    hand-written YAML rarely carries status, and the file source is for that."""
    conditions = get(body, "status.conditions", list, None)
    if conditions is None:
        return True, ""
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            ok = str(c.get("status")) == "True"
            return ok, "" if ok else str(c.get("message") or c.get("reason") or "not Ready")
    return False, "no Ready condition yet"


def parse_configuration(raw: RawObject) -> ConfigurationSpec:
    latest = get(raw.body, "status.latestReadyRevisionName", str)
    return ConfigurationSpec(key=raw.key, latest_ready_revision=latest)


def parse_endpoint_slice(raw: RawObject) -> EndpointSliceSpec:
    labels = raw.labels
    addresses: list[str] = []
    for i, ep in enumerate(get(raw.body, "endpoints", list, [])):
        if not isinstance(ep, Mapping):
            raise ObjectError(f"endpoints[{i}]", f"must be a mapping, got {ep!r}")
        try:
            conditions = get(ep, "conditions", Mapping, {})
        except ObjectError as e:
            raise ObjectError(f"endpoints[{i}].{e.field}", e.message) from None
        # EndpointSlice: a nil `ready` means ready; only an explicit false is not.
        if conditions.get("ready") is False:
            continue
        try:
            addrs = get(ep, "addresses", list, [])
        except ObjectError as e:
            raise ObjectError(f"endpoints[{i}].{e.field}", e.message) from None
        for j, a in enumerate(addrs):
            addresses.append(_ip(f"endpoints[{i}].addresses[{j}]", a))
    ports: list[tuple[str, int]] = []
    for i, p in enumerate(get(raw.body, "ports", list, [])):
        if not isinstance(p, Mapping):
            raise ObjectError(f"ports[{i}]", f"must be a mapping, got {p!r}")
        port = p.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ObjectError(f"ports[{i}].port", f"must be a port number, got {port!r}")
        ports.append((str(p.get("name") or ""), port))
    return EndpointSliceSpec(
        key=raw.key,
        revision=labels.get(REVISION_LABEL),
        service_name=str(labels.get(SERVICE_NAME_LABEL, "")),
        public=labels.get(SERVICE_TYPE_LABEL) == "Public",
        addresses=tuple(sorted(set(addresses))),
        ports=tuple(ports),
    )


def _ip(at: str, value: Any) -> str:
    """An endpoint address: an IP, as Envoy's EDS requires (it NACKs a name or `999.1.1.1`)."""
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise ObjectError(at, f"{_shown(str(value))} is not an IP address") from None


def is_activator_slice(spec: EndpointSliceSpec) -> bool:
    return spec.key.namespace == KNATIVE_NAMESPACE and spec.service_name == ACTIVATOR_SERVICE
