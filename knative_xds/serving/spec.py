"""A `serving.knative.dev/v1` Service or Configuration, parsed and validated as Knative's webhook would.

A Service is a Configuration (its `spec.template`) plus a Route (its
`spec.traffic`). Its traffic is checked by turning it into the Route Knative's
Service controller would write (a target without `revisionName` follows the
Service's configuration) and parsing that with the model's own Route parser,
so a Service's traffic and a Route's obey the same rules and their errors read
alike: `spec.traffic[1].tag` is the same path in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..model.kinds import CONFIGURATION, ROUTE, SERVICE, SERVING
from ..model.objects import ObjectError, RawObject, RouteSpec, check_key, get, parse_route
from ..model.types import ObjectKey
from .template import KNATIVE_DEFAULTS, Limits, Template, parse_template

KINDS = (SERVICE, CONFIGURATION)
# Annotations kubectl writes that a Route or Configuration should not inherit (they are
# the whole applied object, and Knative drops them too).
_NOT_INHERITED = ("kubectl.kubernetes.io/last-applied-configuration",)


@dataclass(frozen=True, slots=True)
class ServingSpec:
    """What a Service or Configuration asks for: a template and, for a Service, traffic."""

    kind: str
    key: ObjectKey
    origin: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    template: Template
    # A Service's traffic as Knative's Route spec: targets without `revisionName`
    # carry `configuration_name` (the Service's own). None for a Configuration.
    traffic: RouteSpec | None


def is_serving(raw: RawObject) -> bool:
    """A Knative Service or Configuration (a core/v1 Service shares the kind name)."""
    return raw.kind in KINDS and raw.api_version == SERVING


def parse_serving(raw: RawObject, limits: Limits = KNATIVE_DEFAULTS) -> ServingSpec:
    """The object's template and traffic; raises ObjectError naming the first bad field."""
    if raw.kind not in KINDS:
        raise ObjectError("kind", f"{raw.kind!r} is neither a Service nor a Configuration")
    if raw.api_version != SERVING:
        raise ObjectError("apiVersion", f"must be {SERVING}, got {raw.api_version!r}")
    check_key(raw)
    labels = raw.labels
    annotations = {k: v for k, v in raw.annotations.items() if k not in _NOT_INHERITED}
    get(raw.body, "spec", Mapping, {})
    template = parse_template(raw.body, raw.key.name, limits)
    if raw.kind == SERVICE:
        traffic: RouteSpec | None = _service_traffic(raw)
    else:
        if get(raw.body, "spec.traffic", list, None) is not None:
            raise ObjectError(
                "spec.traffic",
                "a Configuration has no traffic: write a Route, or make this a Service",
            )
        traffic = None
    return ServingSpec(
        kind=raw.kind,
        key=raw.key,
        origin=raw.origin,
        labels=labels,
        annotations=annotations,
        template=template,
        traffic=traffic,
    )


def _service_traffic(raw: RawObject) -> RouteSpec:
    given = get(raw.body, "spec.traffic", list, None)
    # Knative's default for a Service: everything to the latest ready revision.
    targets = given if given else [{"latestRevision": True, "percent": 100}]
    route_targets = [_route_target(i, t, raw.key.name) for i, t in enumerate(targets)]
    body = {
        "apiVersion": SERVING,
        "kind": ROUTE,
        "metadata": {"name": raw.key.name, "namespace": raw.key.namespace},
        "spec": {"traffic": route_targets},
    }
    return parse_route(RawObject(ROUTE, SERVING, raw.key, body, raw.origin))


def _route_target(i: int, target: Any, configuration: str) -> Any:
    """One Service traffic target as the Route target Knative's MakeRoute writes."""
    at = f"spec.traffic[{i}]"
    if not isinstance(target, Mapping):
        raise ObjectError(at, f"must be a mapping, got {target!r}")
    if "configurationName" in target:
        raise ObjectError(
            f"{at}.configurationName",
            "not allowed in a Service: a target follows the Service's latest revision"
            " (latestRevision: true) or names one (revisionName)",
        )
    if target.get("url") is not None:
        raise ObjectError(f"{at}.url", "is status, not spec: leave it out")
    if target.get("revisionName"):
        return dict(target)
    if target.get("latestRevision") is False:
        raise ObjectError(
            f"{at}.latestRevision",
            "may not be false without a revisionName (which revision would it pin?)",
        )
    return {**target, "configurationName": configuration, "latestRevision": True}
