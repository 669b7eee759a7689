"""Names of the resources we emit. Each leads back to the Knative object it came from."""

from __future__ import annotations

import enum

from ..model import ObjectKey


class Listener(enum.Enum):
    """The gateway's listeners: plain HTTP for public hosts, cluster-local, and HTTPS."""

    EXTERNAL = "external"
    INTERNAL = "internal"
    EXTERNAL_TLS = "external-tls"


def route_table_name(listener: Listener, ingress: ObjectKey) -> str:
    """`<listener>/<namespace>/<name>`: each Ingress has its own table on each listener."""
    return f"{listener.value}/{ingress.namespace}/{ingress.name}"


def scope_name(listener: Listener, key: tuple[str, ...]) -> str:
    """`<listener>/<key>`: `external/<host>`, `internal/<name>.<namespace>`,
    `external-tls/<host>` (scopes.py). Unique per listener, as its keys are:
    internal fragments are DNS labels, which hold no dot; a TLS key repeats one host."""
    return f"{listener.value}/{'.'.join(key[:2] if listener is Listener.INTERNAL else key[:1])}"


def secret_name(secret: ObjectKey) -> str:
    """`<namespace>/<secret>`: one SDS secret per Kubernetes TLS Secret."""
    return f"{secret.namespace}/{secret.name}"


def virtual_host_name(ingress: ObjectKey, host: str) -> str:
    return f"{ingress.namespace}/{ingress.name}/{host}"
