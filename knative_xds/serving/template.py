"""A Service's or Configuration's `spec.template`: validated, defaulted, hashed.

What Knative's admission webhook does to a revision template before it is
stored: reject what a cluster would reject (the error names the field, as a
path inside the whole object), then fill in the defaults, so that a template
with `timeoutSeconds: 300` and one that leaves it out are the same template and
create one revision, not two. The hash of the defaulted template is how a new
template is told from an unchanged one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..model.objects import _DNS1035 as DNS1035
from ..model.objects import LABEL_MAX, ObjectError, dns_label_error, get, in_list, string_map

T = TypeVar("T")
AT = "spec.template"

# Ports the queue-proxy and activator own in a Knative pod; a user container may not take them.
RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091})
PORT_NAMES = ("", "http1", "h2c")
# Autoscaling annotations Knative validates as integers >= 0, and as numbers.
_SCALE_KEYS = tuple(
    f"autoscaling.knative.dev/{k}" for k in ("min-scale", "max-scale", "initial-scale")
)
TARGET = "autoscaling.knative.dev/target"
BURST = "autoscaling.knative.dev/target-burst-capacity"
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Knative's `config-defaults` values that validation and defaulting read."""

    revision_timeout_seconds: int = 300
    max_revision_timeout_seconds: int = 600
    container_concurrency_max: int = 1000
    # Knative's `allow-zero-initial-scale` (off on a cluster): on here, since a
    # revision that starts at zero and wakes on the first request is what one tries locally.
    allow_zero_initial_scale: bool = True


KNATIVE_DEFAULTS = Limits()


@dataclass(frozen=True, slots=True)
class Template:
    """A template as stored: its content with defaults filled in, its hash, its given name."""

    body: Mapping[str, Any]
    digest: str
    name: str | None


def parse_template(obj: Mapping[str, Any], parent: str, limits: Limits) -> Template:
    """`spec.template` of a Service or Configuration named `parent`; raises ObjectError."""
    raw = get(obj, AT, Mapping, None)
    if raw is None:
        raise ObjectError(AT, "missing: a revision template (metadata and spec.containers)")
    body = copy.deepcopy(dict(raw))
    # A null (kubectl's `creationTimestamp: null`) is no value: the API server drops it.
    meta = {
        k: v
        for k, v in _within(AT, lambda: get(body, "metadata", Mapping, {})).items()
        if v is not None
    }
    name = _template_name(meta, parent)
    for key in ("labels", "annotations"):
        # Scalars become strings (`min-scale: 1` means "1"), so both spellings hash alike.
        values = _within(AT, functools.partial(string_map, body, f"metadata.{key}"))
        if values:
            meta[key] = values
        else:
            meta.pop(key, None)
    _check_annotations(meta.get("annotations", {}), limits)
    if meta:
        body["metadata"] = meta
    else:
        body.pop("metadata", None)
    body["spec"] = _spec(body, limits)
    try:
        digest = template_digest(body)
    except (TypeError, ValueError) as e:
        # YAML reads an unquoted `2024-01-01` as a date, `? [a]` as a list key: JSON has neither.
        raise ObjectError(AT, f"holds a value JSON cannot carry ({e}); quote it") from None
    return Template(body=body, digest=digest, name=name)


def template_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of canonical JSON: stable across processes and Python versions, unlike hash()."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg kmeta.ChildName: `parent + suffix`, hashed down to 63 characters.

    A Service name of 58 to 63 characters cannot take `-00001` as is; Knative keeps
    a prefix of it and an MD5 of the whole, so the name stays unique and a label.
    """
    if len(parent) + len(suffix) <= LABEL_MAX:
        return parent + suffix
    head = LABEL_MAX - 32 - len(suffix)
    return parent[:head] + hashlib.md5(parent.encode()).hexdigest() + suffix


def _template_name(meta: Mapping[str, Any], parent: str) -> str | None:
    name: str | None = _within(f"{AT}.metadata", lambda: get(meta, "name", str))
    if not name:
        return None
    at = f"{AT}.metadata.name"
    if len(name) > LABEL_MAX or not DNS1035.match(name):
        raise ObjectError(
            at, f"{name!r} is not a DNS-1035 label (lower case, digits, '-', at most 63)"
        )
    if not name.startswith(f"{parent}-"):
        raise ObjectError(at, f"{name!r} must have prefix {parent + '-'!r}")
    return name


def _check_annotations(annotations: Mapping[str, str], limits: Limits) -> None:
    at = f"{AT}.metadata.annotations"
    scale: dict[str, int] = {}
    for key in _SCALE_KEYS:
        if key in annotations:
            value = annotations[key].strip()
            if not re.fullmatch(r"\d+", value) or int(value) > _INT32_MAX:
                raise ObjectError(f"{at}.{key}", f"must be a whole number >= 0, got {value!r}")
            scale[key.rsplit("/", 1)[1]] = int(value)
    if scale.get("initial-scale") == 0 and not limits.allow_zero_initial_scale:
        raise ObjectError(
            f"{at}.autoscaling.knative.dev/initial-scale",
            "may not be 0 unless allow-zero-initial-scale is on",
        )
    low, high = scale.get("min-scale", 0), scale.get("max-scale", 0)
    if high and high < low:
        raise ObjectError(
            f"{at}.autoscaling.knative.dev/max-scale",
            f"max-scale={high} is less than min-scale={low}",
        )
    _number_at(annotations, TARGET, lambda v: v >= 0.01, "a number of at least 0.01")
    _number_at(annotations, BURST, lambda v: v >= 0 or v == -1, "a number >= 0, or -1")


def _number_at(
    annotations: Mapping[str, str], key: str, ok: Callable[[float], bool], why: str
) -> None:
    if key in annotations:
        value = _number(annotations[key])
        if value is None or not ok(value):
            at = f"{AT}.metadata.annotations.{key}"
            raise ObjectError(at, f"must be {why}, got {annotations[key]!r}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _spec(body: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    at = f"{AT}.spec"
    spec = dict(_within(AT, lambda: get(body, "spec", Mapping, {})))
    containers = _within(at, lambda: get(spec, "containers", list, []))
    if not containers:
        raise ObjectError(f"{at}.containers", "missing: at least one container")
    spec["containers"] = [
        in_list(f"{at}.containers[{i}]", c, _container) for i, c in enumerate(containers)
    ]
    if len(containers) > 1:
        serving = [i for i, c in enumerate(spec["containers"]) if c.get("ports")]
        if len(serving) != 1:
            raise ObjectError(
                f"{at}.containers",
                "with more than one container, exactly one must list `ports` (the one"
                f" that serves requests); {len(serving)} do",
            )
    timeout = _within(at, lambda: get(spec, "timeoutSeconds", int, 0))
    if not 0 <= timeout <= limits.max_revision_timeout_seconds:
        raise ObjectError(
            f"{at}.timeoutSeconds",
            f"must be between 0 and {limits.max_revision_timeout_seconds}, got {timeout}",
        )
    # Knative's defaults: 0 or absent is the configured revision timeout.
    spec["timeoutSeconds"] = timeout or limits.revision_timeout_seconds
    concurrency = _within(at, lambda: get(spec, "containerConcurrency", int, 0))
    if not 0 <= concurrency <= limits.container_concurrency_max:
        raise ObjectError(
            f"{at}.containerConcurrency",
            f"must be between 0 (no limit) and {limits.container_concurrency_max},"
            f" got {concurrency}",
        )
    spec["containerConcurrency"] = concurrency
    for optional in ("responseStartTimeoutSeconds", "idleTimeoutSeconds"):
        value: int = _within(at, functools.partial(get, spec, optional, int, 0))
        if value < 0:
            raise ObjectError(f"{at}.{optional}", f"must not be negative, got {value}")
    return spec


def _container(c: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(c)
    image = get(c, "image", str)
    command = _strings(c, "command")
    _strings(c, "args")
    if not image and not command:
        # Knative requires an image; here a `command` alone runs the revision locally.
        raise ObjectError("image", "missing: an image (and, to run it here, a command)")
    name = get(c, "name", str)
    if name:
        why = dns_label_error(name)
        if why is not None:
            raise ObjectError("name", why)
    for i, e in enumerate(get(c, "env", list, [])):
        in_list(f"env[{i}]", e, _env)
    ports = get(c, "ports", list, [])
    if len(ports) > 1:
        raise ObjectError("ports", f"at most one port may be given, got {len(ports)}")
    for i, p in enumerate(ports):
        in_list(f"ports[{i}]", p, _port)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get(c, probe, Mapping)
    return out


def _strings(c: Mapping[str, Any], key: str) -> list[str]:
    values: list[str] = get(c, key, list, [])
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ObjectError(f"{key}[{i}]", f"must be a string, got {v!r} (quote it in YAML)")
    return values


def _env(e: Mapping[str, Any]) -> None:
    name = get(e, "name", str)
    if not name:
        raise ObjectError("name", "missing: an environment variable's name")
    get(e, "value", str)
    get(e, "valueFrom", Mapping)


def _port(p: Mapping[str, Any]) -> None:
    name = get(p, "name", str, "")
    if name not in PORT_NAMES:
        raise ObjectError("name", f"must be http1 or h2c (or left out), got {name!r}")
    port = get(p, "containerPort", int)
    if port is not None:
        if not 0 < port < 65536:
            raise ObjectError("containerPort", f"must be a port number, got {port}")
        if port in RESERVED_PORTS:
            raise ObjectError(
                "containerPort", f"{port} is reserved by Knative ({sorted(RESERVED_PORTS)})"
            )


def _within(prefix: str, read: Callable[[], T]) -> T:
    """Run a getter and put `prefix.` in front of the field of any error it raises."""
    try:
        return read()
    except ObjectError as e:
        raise ObjectError(f"{prefix}.{e.field}" if e.field else prefix, e.message) from None
