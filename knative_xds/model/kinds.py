"""The object kinds knative-xds reads: their names, API groups, and the fields the parsers keep.

Sources (files, Kubernetes) import this, never the resolver: what a kind is
called, where the API server serves it and which of its fields the model
reads are facts of the parsers (objects.py, kingress.py, network.py), kept
here beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .types import ObjectKey

SERVING = "serving.knative.dev/v1"
NETWORKING = "networking.internal.knative.dev/v1alpha1"
DISCOVERY = "discovery.k8s.io/v1"
CORE = "v1"

ROUTE = "Route"
REVISION = "Revision"
CONFIGURATION = "Configuration"
ENDPOINT_SLICE = "EndpointSlice"
CONFIG_MAP = "ConfigMap"
INGRESS = "Ingress"  # Knative's KIngress, networking.internal.knative.dev
SERVICE = "Service"  # core/v1: a KIngress backend
SECRET = "Secret"  # core/v1: a KIngress TLS certificate

# An object's identity across kinds.
Ident = tuple[str, ObjectKey]

# Per kind, its API group/version. `Service` also names Knative's serving.knative.dev
# Service; only the core/v1 one is read (see `accepts`).
API_VERSIONS: Mapping[str, str] = {
    ROUTE: SERVING,
    REVISION: SERVING,
    CONFIGURATION: SERVING,
    ENDPOINT_SLICE: DISCOVERY,
    CONFIG_MAP: CORE,
    INGRESS: NETWORKING,
    SERVICE: CORE,
    SECRET: CORE,
}
KINDS = tuple(API_VERSIONS)

KNATIVE_NAMESPACE = "knative-serving"
ACTIVATOR_SERVICE = "activator-service"
NETWORK_CONFIG_MAPS = ("config-domain", "config-network")
# The gateway's own settings (model/gateway_options.py): listeners, not hosts.
GATEWAY_CONFIG_MAP = "config-xds"
# Every ConfigMap of KNATIVE_NAMESPACE the model reads.
CONFIG_MAPS = (*NETWORK_CONFIG_MAPS, GATEWAY_CONFIG_MAP)

REVISION_LABEL = "serving.knative.dev/revision"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
CONFIGURATION_GENERATION_LABEL = "serving.knative.dev/configurationGeneration"
SERVICE_LABEL = "serving.knative.dev/service"  # a Knative Service's name, on what it owns
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_TYPE_LABEL = "networking.internal.knative.dev/serviceType"
VISIBILITY_LABEL = "networking.knative.dev/visibility"
BURST_CAPACITY_ANNOTATION = "autoscaling.knative.dev/target-burst-capacity"
INGRESS_CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
DEFAULT_INGRESS_CLASS = "xds.ingress.networking.knative.dev"


class Accepted(NamedTuple):
    ok: bool
    why: str = ""


def accepts(kind: str, api_version: str) -> Accepted:
    """Whether an object of this kind and apiVersion is one the model reads."""
    want = API_VERSIONS.get(kind)
    if want is None:
        return Accepted(False, f"knative-xds does not read kind {kind}")
    if api_version and api_version != want:
        return Accepted(False, f"{kind} of apiVersion {api_version} is not read (only {want})")
    return Accepted(True)


# The fields the model reads, per kind; `[]` means every item of a list. A source may
# drop every other field (the Kubernetes source does, so memory grows with what is
# routed, not with managedFields or pod templates). When a parser starts reading
# another field, add it here: a test checks that trimmed objects parse as whole ones.
KEEP: Mapping[str, tuple[str, ...]] = {
    ROUTE: ("spec.traffic",),
    REVISION: (
        "spec.containers[].ports",
        "spec.timeoutSeconds",
        "status.conditions[].type",
        "status.conditions[].status",
        "status.conditions[].reason",
        "status.conditions[].message",
    ),
    CONFIGURATION: ("status.latestReadyRevisionName",),
    ENDPOINT_SLICE: ("endpoints[].addresses", "endpoints[].conditions.ready", "ports"),
    CONFIG_MAP: ("data",),
    INGRESS: ("spec", "metadata.generation"),
    SERVICE: ("spec.type", "spec.externalName", "spec.ports"),
    SECRET: ("type",),
}
# Metadata every kind keeps.
KEEP_METADATA = ("apiVersion", "kind", "metadata.name", "metadata.namespace", "metadata.labels")
# Annotations kept per kind (their keys hold dots, so they are listed apart).
KEEP_ANNOTATIONS: Mapping[str, tuple[str, ...]] = {
    REVISION: (BURST_CAPACITY_ANNOTATION,),
    INGRESS: (INGRESS_CLASS_ANNOTATION,),
}
# Keys of `data` kept per kind (dotted too): of a TLS Secret, its certificate and key
# only, never a `ca.crt` or anything else it holds.
KEEP_DATA: Mapping[str, tuple[str, ...]] = {SECRET: ("tls.crt", "tls.key")}
