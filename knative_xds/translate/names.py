"""Names of the resources we emit. Each leads back to the Knative object it came from."""

from __future__ import annotations

from ..model import ObjectKey, Visibility

EXTERNAL = "external"
INTERNAL = "internal"

LISTENER_FOR = {Visibility.EXTERNAL: EXTERNAL, Visibility.CLUSTER_LOCAL: INTERNAL}


def cluster_name(revision: ObjectKey) -> str:
    """`<namespace>/<revision>`: one cluster (and one endpoint set) per revision."""
    return f"{revision.namespace}/{revision.name}"


def route_table_name(visibility: Visibility, route: ObjectKey) -> str:
    """`<listener>/<namespace>/<route>`: each Route has its own table on each listener."""
    return f"{LISTENER_FOR[visibility]}/{route.namespace}/{route.name}"


def scope_name(visibility: Visibility, key: tuple[str, ...]) -> str:
    """`<listener>/<key>`, the scope key's fragments joined by dots: `external/<host>`,
    `internal/<name>.<namespace>` (scopes.py). Unique per listener, as its keys are:
    internal fragments are DNS labels, which hold no dot."""
    return f"{LISTENER_FOR[visibility]}/{'.'.join(key)}"


def virtual_host_name(route: ObjectKey, host: str) -> str:
    return f"{route.namespace}/{route.name}/{host}"
