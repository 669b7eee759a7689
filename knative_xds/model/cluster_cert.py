"""The gateway's own certificate: `cluster-cert-secret` in `config-xds`, for internal TLS.

The Secret is looked for in `knative-serving`, the namespace of `config-xds`,
which is where Kourier's controller (whose namespace Kourier reads it from)
runs: a user copying their `config-kourier` data finds it where it was. It is
served over SDS like a KIngress's certificate (certificates.py), so a rotation
re-sends the one Secret. A Secret that is missing or unusable keeps the last
good certificate serving (or, with none, no cluster-local TLS listener: Envoy
would keep a listener waiting for its certificate warming for ever), and is
reported on the key that names it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .kinds import CONFIG_MAP, GATEWAY_CONFIG_MAP, KNATIVE_NAMESPACE
from .types import Certificate, GatewayOptions, ObjectKey, Problem

KEY = "cluster-cert-secret"
CONFIG_XDS = ObjectKey(KNATIVE_NAMESPACE, GATEWAY_CONFIG_MAP)


def cluster_cert_key(options: GatewayOptions) -> ObjectKey | None:
    """The Secret `cluster-cert-secret` names, or None when the key is unset or empty."""
    name = options.cluster_cert_secret
    return ObjectKey(KNATIVE_NAMESPACE, name) if name else None


def cluster_cert_problem(
    options: GatewayOptions,
    *,
    parsed: object,
    served: Mapping[ObjectKey, Certificate],
    origin: str = "",
) -> Problem | None:
    """Why the named Secret is not served as it is now, or None when it is.

    `parsed` is the Secret's current good parse (None when it is absent or does
    not parse: its own Problem then names the bad key); `served` the certificates
    the gateway serves.
    """
    key = cluster_cert_key(options)
    if key is None or isinstance(parsed, Certificate):
        return None
    if key in served:
        outcome = "the cluster-local TLS listener keeps its last good certificate"
    else:
        outcome = "no cluster-local TLS listener is served until it is"
    return Problem(
        origin,
        CONFIG_MAP,
        str(CONFIG_XDS),
        f"data.{KEY}",
        f"Secret {key} is not found, or is not a TLS Secret with PEM data.tls.crt and"
        f" data.tls.key (see its own problem, if any); {outcome}",
    )
