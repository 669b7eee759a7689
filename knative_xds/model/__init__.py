"""The desired state: Knative objects parsed, validated and resolved into frozen values."""

from .objects import RawObject
from .resolve import Resolver, Update
from .types import (
    AccessLogFormat,
    ActivatorEndpoints,
    ActivatorMode,
    Backend,
    Certificate,
    Endpoint,
    GatewayOptions,
    HttpOption,
    Ingress,
    ObjectKey,
    Path,
    Problem,
    Protocol,
    Rule,
    Split,
    State,
    Tls,
    Visibility,
)

__all__ = [
    "AccessLogFormat",
    "ActivatorEndpoints",
    "ActivatorMode",
    "Backend",
    "Certificate",
    "Endpoint",
    "GatewayOptions",
    "HttpOption",
    "Ingress",
    "ObjectKey",
    "Path",
    "Problem",
    "Protocol",
    "RawObject",
    "Resolver",
    "Rule",
    "Split",
    "State",
    "Tls",
    "Update",
    "Visibility",
]
