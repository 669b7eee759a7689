"""Knative objects as plain dicts, the shape `kubectl get -o yaml` prints.

Tests, benchmarks and examples build their input with these, so it always
looks like what a cluster or a user's file holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from .model.kinds import (
    ACTIVATOR_SERVICE,
    KNATIVE_NAMESPACE,
    REVISION_LABEL,
    SERVICE_NAME_LABEL,
    SERVICE_TYPE_LABEL,
    VISIBILITY_LABEL,
)

Obj = dict[str, Any]


def _meta(name: str, namespace: str, **extra: Any) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def target(
    revision: str | None = None,
    percent: int | None = None,
    *,
    tag: str | None = None,
    configuration: str | None = None,
) -> Obj:
    t: Obj = {}
    if revision:
        t["revisionName"] = revision
    if configuration:
        t["configurationName"] = configuration
        t["latestRevision"] = True
    if percent is not None:
        t["percent"] = percent
    if tag:
        t["tag"] = tag
    return t


def route(
    name: str, traffic: Sequence[Obj], *, namespace: str = "default", cluster_local: bool = False
) -> Obj:
    labels = {VISIBILITY_LABEL: "cluster-local"} if cluster_local else None
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": _meta(name, namespace, labels=labels),
        "spec": {"traffic": list(traffic)},
    }


def revision(
    name: str,
    *,
    namespace: str = "default",
    h2c: bool = False,
    timeout: int | None = None,
    ready: bool | None = None,
    command: Sequence[str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Obj:
    container: Obj = {"image": f"example.com/{name}"}
    if command:
        container["command"] = list(command)
    container["ports"] = [{"name": "h2c" if h2c else "http1", "containerPort": 8080}]
    spec: Obj = {"containers": [container]}
    if timeout is not None:
        spec["timeoutSeconds"] = timeout
    obj: Obj = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": _meta(name, namespace, annotations=annotations),
        "spec": spec,
    }
    if ready is not None:
        obj["status"] = {"conditions": [{"type": "Ready", "status": str(ready)}]}
    return obj


def configuration(name: str, latest_ready: str, *, namespace: str = "default") -> Obj:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "metadata": _meta(name, namespace),
        "status": {"latestReadyRevisionName": latest_ready},
    }


def endpoint_slice(
    revision_name: str,
    addresses: Iterable[str],
    port: int,
    *,
    namespace: str = "default",
    port_name: str = "http",
    not_ready: Iterable[str] = (),
    suffix: str = "abcde",
) -> Obj:
    """The slice Knative's private revision service gets: pods, at the queue-proxy port."""
    service = f"{revision_name}-private"
    endpoints = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    endpoints += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(
            f"{service}-{suffix}",
            namespace,
            labels={
                REVISION_LABEL: revision_name,
                SERVICE_NAME_LABEL: service,
                SERVICE_TYPE_LABEL: "Private",
            },
        ),
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def activator_slice(address: str, http_port: int, h2c_port: int | None = None) -> Obj:
    ports = [{"name": "http", "port": http_port, "protocol": "TCP"}]
    if h2c_port is not None:
        ports.append({"name": "http2", "port": h2c_port, "protocol": "TCP"})
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(
            f"{ACTIVATOR_SERVICE}-xyz",
            KNATIVE_NAMESPACE,
            labels={SERVICE_NAME_LABEL: ACTIVATOR_SERVICE},
        ),
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": ports,
    }


def config_map(name: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, KNATIVE_NAMESPACE),
        "data": dict(data),
    }


def dump(objects: Iterable[Obj]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False)
