"""Builders for a KIngress and the core objects it names, as `kubectl get -o yaml` prints them.

Each builder makes a valid default and takes keyword overrides, like Kourier's
`ing(ns, name, opts...)`: a test spells out only what its row is about. The
shapes follow knative/networking `ingress_types.go` (KIngress) and core/v1
(Service, Secret) and discovery/v1 (EndpointSlice).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from typing import Any

from knative_xds.model.kinds import (
    DEFAULT_INGRESS_CLASS,
    INGRESS_CLASS_ANNOTATION,
    NETWORKING,
    REVISION_LABEL,
    SERVICE_NAME_LABEL,
)

Obj = dict[str, Any]
NS = "default"
# Knative's ingress class annotation, and the class a default Resolver serves.
CLASS = DEFAULT_INGRESS_CLASS
CLASS_ANNOTATION = INGRESS_CLASS_ANNOTATION

# Not real certificates: the model only checks the PEM armour, and no test here dials TLS.
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n"


# -- the KIngress ----------------------------------------------------------------------------


def a_split(
    service: str = "hello",
    port: int | str | None = 80,
    percent: int | None = None,
    *,
    ns: str | None = NS,
    headers: Mapping[str, str] | None = None,
) -> Obj:
    """`IngressBackendSplit`; None leaves a field out (to break a validation rule)."""
    split: Obj = {"serviceName": service}
    if ns is not None:
        split["serviceNamespace"] = ns
    if port is not None:
        split["servicePort"] = port
    if percent is not None:
        split["percent"] = percent
    if headers:
        split["appendHeaders"] = dict(headers)
    return split


def a_path(
    *splits: Obj,
    path: str | None = None,
    match: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    rewrite_host: str | None = None,
) -> Obj:
    """`HTTPIngressPath`: `match` are exact header matches, `headers` set before the split."""
    out: Obj = {"splits": list(splits) if splits else [a_split()]}
    if path is not None:
        out["path"] = path
    if rewrite_host is not None:
        out["rewriteHost"] = rewrite_host
    if match:
        out["headers"] = {name: {"exact": value} for name, value in match.items()}
    if headers:
        out["appendHeaders"] = dict(headers)
    return out


def a_rule(
    *hosts: str, paths: Sequence[Obj] | None = None, visibility: str | None = "ExternalIP"
) -> Obj:
    """`IngressRule`: by default one ExternalIP host and one path to Service `hello:80`."""
    rule: Obj = {
        "hosts": list(hosts) or ["hello.default.example.com"],
        "http": {"paths": list(paths) if paths is not None else [a_path()]},
    }
    if visibility is not None:
        rule["visibility"] = visibility
    return rule


def a_local_rule(name: str = "hello", *, ns: str = NS, paths: Sequence[Obj] | None = None) -> Obj:
    """The ClusterLocal rule Knative writes for a Route: `name.ns.svc.cluster.local`."""
    return a_rule(f"{name}.{ns}.svc.cluster.local", paths=paths, visibility="ClusterLocal")


def a_tls(*hosts: str, secret: str = "hello-tls", ns: str | None = NS) -> Obj:
    tls: Obj = {"hosts": list(hosts) or ["hello.default.example.com"], "secretName": secret}
    if ns is not None:
        tls["secretNamespace"] = ns
    return tls


def a_kingress(
    name: str = "hello",
    *rules: Obj,
    ns: str = NS,
    tls: Sequence[Obj] = (),
    http_option: str | None = None,
    ingress_class: Any = CLASS,
    generation: int = 1,
) -> Obj:
    """A KIngress of our class with `rules` (one default ExternalIP rule if none).

    `ingress_class=None` leaves the annotation out; "" writes it empty.
    """
    meta: Obj = {"name": name, "namespace": ns, "generation": generation}
    if ingress_class is not None:
        meta["annotations"] = {CLASS_ANNOTATION: ingress_class}
    spec: Obj = {"rules": list(rules) or [a_rule()]}
    if tls:
        spec["tls"] = list(tls)
    if http_option is not None:
        spec["httpOption"] = http_option
    return {"apiVersion": NETWORKING, "kind": "Ingress", "metadata": meta, "spec": spec}


def with_spec(kingress: Obj, **fields: Any) -> Obj:
    """A copy of `kingress` with spec fields replaced (well-formed or not)."""
    out = copy.deepcopy(kingress)
    out["spec"].update(fields)
    return out


# -- what it names -----------------------------------------------------------------------------


def a_port(port: int = 80, name: str = "http", *, app_protocol: str | None = None) -> Obj:
    out: Obj = {"port": port, "protocol": "TCP"}
    if name:
        out["name"] = name
    if app_protocol is not None:
        out["appProtocol"] = app_protocol
    return out


def a_service(
    name: str = "hello",
    *ports: Obj,
    ns: str = NS,
    revision: str | None = None,
    external_name: str | None = None,
) -> Obj:
    """A core/v1 Service; with `revision`, a revision's public Service as Knative labels it."""
    meta: Obj = {"name": name, "namespace": ns}
    if revision is not None:
        meta["labels"] = {REVISION_LABEL: revision}
    spec: Obj = {"ports": list(ports) or [a_port()]}
    if external_name is not None:
        spec.update(type="ExternalName", externalName=external_name)
    else:
        spec.update(type="ClusterIP", clusterIP="10.96.0.10")
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def a_service_slice(
    service: str = "hello",
    addresses: Sequence[str] = ("10.2.0.1",),
    ports: Mapping[str, int] | None = None,
    *,
    ns: str = NS,
    not_ready: Sequence[str] = (),
    suffix: str = "x7k2p",
) -> Obj:
    """A Service's EndpointSlice as the endpointslice controller writes it: its port names
    are the Service's port names, its ports the pods' target ports."""
    endpoints = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    endpoints += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    named = ports if ports is not None else {"http": 8080}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{suffix}",
            "namespace": ns,
            "labels": {
                SERVICE_NAME_LABEL: service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in named.items()],
    }


def a_secret(
    name: str = "hello-tls", *, ns: str = NS, cert: bytes = CERT_PEM, key: bytes = KEY_PEM
) -> Obj:
    """A `kubernetes.io/tls` Secret; its data base64-encoded, as the API server gives it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def rotated(cert_id: str) -> bytes:
    """Another (fake) certificate chain, told apart by `cert_id`."""
    return f"-----BEGIN CERTIFICATE-----\nMII{cert_id}\n-----END CERTIFICATE-----\n".encode()
