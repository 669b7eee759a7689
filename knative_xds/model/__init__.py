"""The desired state: Knative objects parsed, validated and resolved into frozen values."""

from .objects import RawObject
from .resolve import Resolver, Update
from .types import (
    ActivatorEndpoints,
    ActivatorMode,
    Endpoint,
    HostRule,
    ObjectKey,
    Problem,
    Protocol,
    Revision,
    Route,
    Split,
    State,
    Visibility,
)

__all__ = [
    "ActivatorEndpoints",
    "ActivatorMode",
    "Endpoint",
    "HostRule",
    "ObjectKey",
    "Problem",
    "Protocol",
    "RawObject",
    "Resolver",
    "Revision",
    "Route",
    "Split",
    "State",
    "Update",
    "Visibility",
]
