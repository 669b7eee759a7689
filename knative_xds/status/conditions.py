"""The KIngress status Knative reads, built from readiness and problems. Pure functions.

Knative's Route waits for its KIngress to report Ready with observedGeneration
equal to its generation, then reads `publicLoadBalancer`/`privateLoadBalancer`
for where to send traffic. The conditions follow knative.dev/pkg's living
condition set for Ingress (ingress_lifecycle.go): `NetworkConfigured` and
`LoadBalancerReady` feed `Ready` (a False dependent makes it False, else an
Unknown one makes it Unknown, else it is True, carrying that dependent's
reason and message). As knative.dev/pkg writes them: sorted by type,
`severity` left out (these are all terminal conditions, severity Error, which
is the empty string), empty `reason`/`message` left out, and
`lastTransitionTime` (RFC 3339, seconds) kept while nothing else about a
condition changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .readiness import Readiness

NETWORK_CONFIGURED = "NetworkConfigured"
LOAD_BALANCER_READY = "LoadBalancerReady"
READY = "Ready"
# The spec could not be turned into gateway configuration (the last good one still serves).
INVALID = "InvalidIngress"
# Nothing of this KIngress was ever served (Knative's own words for a load balancer not ready).
UNINITIALIZED = "Uninitialized"
UNINITIALIZED_MESSAGE = "Waiting for load balancer to be ready"

PUBLIC_GATEWAY = "knative-xds-gateway.knative-xds.svc.cluster.local"
PRIVATE_GATEWAY = "knative-local-gateway.knative-xds.svc.cluster.local"

Status = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadBalancers:
    """Where Knative sends a Ready KIngress's traffic: the gateway Services' cluster names."""

    public: str = PUBLIC_GATEWAY
    private: str = PRIVATE_GATEWAY


def rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def desired_status(
    readiness: Readiness | None,
    problem: str | None,
    *,
    generation: int,
    balancers: LoadBalancers,
    previous: Mapping[str, Any],
    now: str,
) -> Status:
    """The status to write: observedGeneration, the three conditions and, once the
    load balancer is ready, its addresses. `previous` is the status the object has."""
    if problem is None:
        network = _condition(NETWORK_CONFIGURED, "True")
    else:
        network = _condition(NETWORK_CONFIGURED, "False", INVALID, problem)
    if readiness is None:
        balancer = _condition(LOAD_BALANCER_READY, "Unknown", UNINITIALIZED, UNINITIALIZED_MESSAGE)
    elif readiness.ready:
        balancer = _condition(LOAD_BALANCER_READY, "True")
    else:
        balancer = _condition(LOAD_BALANCER_READY, "Unknown", readiness.reason, readiness.message)
    before = {c.get("type"): c for c in previous.get("conditions") or ()}
    conditions = [
        _timed(c, before.get(c["type"]), now)
        for c in sorted((network, balancer, _ready(network, balancer)), key=lambda c: c["type"])
    ]
    status: Status = {"observedGeneration": generation, "conditions": conditions}
    if balancer["status"] == "True":
        # Left as they are while a new generation is pending, as Knative's MarkLoadBalancerReady
        # is the only thing that sets them.
        status["publicLoadBalancer"] = {"ingress": [{"domainInternal": balancers.public}]}
        status["privateLoadBalancer"] = {"ingress": [{"domainInternal": balancers.private}]}
    return status


def same(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Would writing `desired` change what `current` says (transition times aside)?"""
    for field, value in desired.items():
        if field == "conditions":
            if _untimed(value) != _untimed(current.get(field) or ()):
                return False
        elif current.get(field) != value:
            return False
    return True


def is_ready(status: Mapping[str, Any], generation: int) -> bool:
    """What Knative's `Ingress.IsReady` asks: Ready True and the latest generation observed."""
    ready = [c for c in status.get("conditions") or () if c.get("type") == READY]
    return status.get("observedGeneration") == generation and any(
        c.get("status") == "True" for c in ready
    )


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"type": kind, "status": status}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _ready(*dependents: dict[str, str]) -> dict[str, str]:
    for wanted in ("False", "Unknown"):
        for c in dependents:
            if c["status"] == wanted:
                return _condition(READY, wanted, c.get("reason", ""), c.get("message", ""))
    return _condition(READY, "True")


def _timed(condition: dict[str, str], before: Mapping[str, Any] | None, now: str) -> dict[str, str]:
    unchanged = before is not None and _untimed((before,)) == _untimed((condition,))
    at = before.get("lastTransitionTime") if unchanged and before else None
    # Knative's field order: type, status, (severity,) lastTransitionTime, reason, message.
    head = {"type": condition["type"], "status": condition["status"]}
    return {**head, "lastTransitionTime": at or now, **condition}


def _untimed(conditions: Any) -> list[dict[str, Any]]:
    out = [
        {k: v for k, v in c.items() if k != "lastTransitionTime" and v not in ("", None)}
        for c in conditions
    ]
    return sorted(out, key=lambda c: str(c.get("type")))
