"""The desired state, as frozen values.

Everything here is already resolved and validated. Both inputs, Knative Routes
(with their Revisions) and KIngresses (with their Services), become one shape:
an `Ingress` of rules (hosts, visibility) → paths (matches, headers, host
rewrite) → splits (percent, headers) → backends, and each backend's endpoints
already chosen (the activator or ready pods). Translation reads these values
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
    """Upstream protocol: a revision's container port named `h2c`, or a Service port named
    `http2`/`h2c` (or with appProtocol `kubernetes.io/h2c`), selects HTTP/2."""

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


class HttpOption(enum.Enum):
    """KIngress `httpOption`: plain HTTP served, or answered with a redirect to https."""

    ENABLED = "Enabled"
    REDIRECTED = "Redirected"


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream cluster: a revision, a Kubernetes Service port, or a DNS name.

    `name` is the cluster's name. A backend with `revision` set follows the
    activator-or-pods rule (its endpoints are the revision's ready pods, or the
    activator's while it has none); one with `dns` set is an ExternalName
    Service, resolved by Envoy (no EDS); any other takes its Service's endpoints.
    """

    name: str
    protocol: Protocol = Protocol.HTTP1
    revision: ObjectKey | None = None
    # A plain Service: its slices' endpoints at the port of this name.
    service: ObjectKey | None = None
    port_name: str = ""
    # Knative's `autoscaling.knative.dev/target-burst-capacity: "-1"` pins the activator.
    activator_always: bool = False
    # The revision's request timeout; the route's idle timeout is never shorter.
    timeout_seconds: int = 0
    dns: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True, order=True)
class Split:
    """One weighted share of a path's traffic. Percent is 1..100; 0 % shares are dropped.

    `headers` are set (overwriting any the request has) once this split is chosen.
    """

    backend: str
    percent: int
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Path:
    """One match of a rule, tried in order: the first that matches a request wins.

    `prefix` "" matches every path; `match_headers` must all be present with these
    exact values; `headers` are set before the split; `rewrite_host` replaces the
    Host (authority) sent upstream.
    """

    splits: tuple[Split, ...]
    prefix: str = ""
    match_headers: Headers = ()
    headers: Headers = ()
    rewrite_host: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """A set of hosts, the listeners they answer on, and their paths.

    ExternalIP rules answer on the external listener and on the internal one;
    cluster-local rules on the internal listener only.
    """

    visibility: Visibility
    hosts: tuple[str, ...]
    paths: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.hosts[0]


@dataclass(frozen=True, slots=True)
class Tls:
    """KIngress `spec.tls[]`: these hosts are served over TLS with this Secret's certificate."""

    hosts: tuple[str, ...]
    secret: ObjectKey


@dataclass(frozen=True, slots=True)
class Ingress:
    """What the gateway serves for one Knative Route or one KIngress.

    It embeds its Backends, so an Ingress kept at its last good version after a
    bad edit still brings its clusters along. `kind` and `generation` say which
    object it came from (status is reported on a KIngress's generation).
    """

    key: ObjectKey
    rules: tuple[Rule, ...]
    backends: tuple[Backend, ...]
    tls: tuple[Tls, ...] = ()
    http_option: HttpOption = HttpOption.ENABLED
    kind: str = "Route"
    generation: int = 0
    # ExternalIP hosts not answered on the internal listener: another Ingress holds
    # their cluster-local scope there (model/hosts.py).
    internal_shadowed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Certificate:
    """A TLS Secret's certificate chain and private key (PEM), served over SDS."""

    key: ObjectKey
    chain: bytes
    private_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ActivatorEndpoints:
    """The activator's ready addresses: port `http` (8012) and `http2` (8013)."""

    http: tuple[Endpoint, ...] = ()
    h2c: tuple[Endpoint, ...] = ()

    def for_protocol(self, protocol: Protocol) -> tuple[Endpoint, ...]:
        return self.h2c if protocol is Protocol.H2C else self.http


class AccessLogFormat(enum.Enum):
    """How an access log line is written: Envoy's text format (or the template), or JSON."""

    TEXT = "text"
    JSON = "json"


class ExtAuthzProtocol(enum.Enum):
    """How the gateway asks the external authorizer: Envoy's gRPC API, or plain HTTP(S)."""

    GRPC = "grpc"
    HTTP = "http"
    HTTPS = "https"


@dataclass(frozen=True, slots=True)
class ExtAuthz:
    """The external authorizer (`extauthz-*` in config-xds), with Kourier's defaults."""

    host: str
    port: int
    protocol: ExtAuthzProtocol = ExtAuthzProtocol.GRPC
    failure_mode_allow: bool = False
    max_request_bytes: int = 8192
    timeout_ms: int = 2000
    path_prefix: str = ""  # HTTP(S) only: put before the request's path


class TracingProtocol(enum.Enum):
    """How spans reach the collector: OTLP over gRPC, or OTLP/HTTP (protobuf POSTs)."""

    GRPC = "grpc"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class Tracing:
    """The OTLP collector spans go to (`tracing-*` in config-xds), with Kourier's defaults."""

    host: str
    port: int
    protocol: TracingProtocol = TracingProtocol.GRPC
    path: str = "/v1/traces"  # OTLP/HTTP only: where spans are POSTed
    sampling_rate: float = 1.0  # 0..1: the share of requests traced
    service_name: str = "kourier-knative"


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """The gateway's settings from ConfigMap `config-xds` (model/gateway_options.py).

    Every field's default is the gateway as it is with no such ConfigMap; None
    means "not set here": the control plane's flag or the edge default applies.
    """

    access_log: bool = False
    # Envoy format commands (`%REQ(:PATH)%`); empty: Envoy's default line. With JSON,
    # the field names and their commands.
    access_log_template: str = ""
    access_log_json: tuple[tuple[str, str], ...] = ()
    access_log_format: AccessLogFormat = AccessLogFormat.TEXT
    proxy_protocol: bool = False
    cipher_suites: tuple[str, ...] = ()  # empty: Envoy's defaults
    min_tls_version: str = ""  # "1.0" to "1.3"; empty: Envoy's default (1.2)
    stream_idle_timeout: float | None = None  # seconds, 0 turns it off
    trusted_hops: int | None = None
    # A TLS Secret in knative-serving: the cluster-local TLS listener's certificate
    # (model/cluster_cert.py); empty: no such listener.
    cluster_cert_secret: str = ""
    ext_authz: ExtAuthz | None = None  # None: no external authorization
    tracing: Tracing | None = None  # None: no spans sent


def _frozen_map(value: Mapping) -> Map:
    # A persistent map: the resolver derives each State from the last by setting only
    # what changed, sharing the rest, so an edit does not copy every Route.
    return value if isinstance(value, Map) else Map(value)


@dataclass(frozen=True, slots=True)
class State:
    """One complete, consistent desired state: what every gateway should serve."""

    ingresses: Mapping[ObjectKey, Ingress] = field(default_factory=dict)
    # Per backend (cluster name) in use, the endpoints chosen for it: its ready pods or
    # the activator for a revision, its Service's ready endpoints for a Service.
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    # Every backend some served Ingress uses, by name (one version each).
    backends: Mapping[str, Backend] = field(default_factory=dict)
    # TLS certificates named by some served Ingress.
    certificates: Mapping[ObjectKey, Certificate] = field(default_factory=dict)
    activator: ActivatorEndpoints = ActivatorEndpoints()
    activator_mode: ActivatorMode = ActivatorMode.AT_ZERO
    gateway: GatewayOptions = GatewayOptions()

    def __post_init__(self) -> None:
        for name in ("ingresses", "endpoints", "backends", "certificates"):
            object.__setattr__(self, name, _frozen_map(getattr(self, name)))


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
