"""Knative's networking settings: `config-domain`, `config-network`, and the hosts they give.

Host names follow Knative's templates: `{{.Name}}.{{.Namespace}}.{{.Domain}}` by
default, and a tag is prefixed as `{{.Tag}}-{{.Name}}`. Only the fields Knative
documents for these templates are supported; anything else is an error on the
ConfigMap key, reported when the ConfigMap is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from . import yamltext
from .objects import (
    ObjectError,
    RawObject,
    dns_subdomain_error,
    string_map,
)
from .types import ActivatorMode

DEFAULT_DOMAIN = "example.com"
CLUSTER_LOCAL_DOMAIN = "svc.cluster.local"
DEFAULT_DOMAIN_TEMPLATE = "{{.Name}}.{{.Namespace}}.{{.Domain}}"
DEFAULT_TAG_TEMPLATE = "{{.Tag}}-{{.Name}}"

_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
# A selector is a few labels: a value this big is a mistake or an attack, not a selector.
_SELECTOR_LIMITS = yamltext.Limits(max_bytes=64 * 1024, max_depth=8, max_nodes=10_000)


@dataclass(frozen=True, slots=True)
class DomainRule:
    domain: str
    # Route labels that must all match; empty means "the default domain".
    selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    domains: tuple[DomainRule, ...] = (DomainRule(DEFAULT_DOMAIN),)
    domain_template: str = DEFAULT_DOMAIN_TEMPLATE
    tag_template: str = DEFAULT_TAG_TEMPLATE
    tag_header_routing: bool = False
    activator_mode: ActivatorMode = ActivatorMode.AT_ZERO

    def domain_for(self, labels: Mapping[str, str]) -> str:
        """Knative's rule: the matching selector with the most labels wins, else the default."""
        best: DomainRule | None = None
        for rule in self.domains:
            if all(labels.get(k) == v for k, v in rule.selector) and (
                best is None or len(rule.selector) > len(best.selector)
            ):
                best = rule
        return best.domain if best else DEFAULT_DOMAIN


def render(template: str, **values: str) -> str:
    def sub(m: re.Match[str]) -> str:
        return values[m.group(1)]

    return _FIELD.sub(sub, template)


def _check_template(key: str, template: str, allowed: set[str]) -> str:
    for name in _FIELD.findall(template):
        if name not in allowed:
            raise ObjectError(
                f"data.{key}", f"unknown field .{name}; use {', '.join(sorted(allowed))}"
            )
    rest = _FIELD.sub("", template)
    if "{{" in rest or "}}" in rest:
        # Go's pipes, functions and conditionals ({{.Name | lower}}, {{if}}) are not run here.
        raise ObjectError(
            f"data.{key}",
            f"{template[:100]!r}: only plain fields like {{{{.Name}}}} are supported"
            " (no pipes '|', functions or conditionals)",
        )
    return template


# Knative checks a template by running it on sample values; two samples also show
# whether it gives each Route its own host.
_SAMPLES = (
    {"Name": "foo", "Namespace": "bar", "Domain": "baz.com", "Tag": ""},
    {"Name": "qux", "Namespace": "quux", "Domain": "baz.com", "Tag": ""},
)


def _check_domain_template(template: str) -> None:
    hosts = [render(template, **v).lower() for v in _SAMPLES]
    for host in hosts:
        why = dns_subdomain_error(host)
        if why is not None:
            raise ObjectError(
                "data.domain-template", f"gives host {host!r} for a sample Route: {why}"
            )
    if hosts[0] == hosts[1]:
        raise ObjectError(
            "data.domain-template",
            f"gives every Route the same host {hosts[0]!r}: use {{{{.Name}}}} in it",
        )


def _check_tag_template(template: str) -> None:
    names = [render(template, Name="foo", Tag=tag) for tag in ("v1", "v2")]
    for name in names:
        why = dns_subdomain_error(name.lower())
        if why is not None:
            raise ObjectError("data.tag-template", f"gives {name!r} for a sample tag: {why}")
    if names[0] == names[1]:
        raise ObjectError(
            "data.tag-template", f"gives every tag the same name {names[0]!r}: use {{{{.Tag}}}}"
        )


def parse_config_domain(raw: RawObject, base: NetworkConfig) -> NetworkConfig:
    rules: list[DomainRule] = []
    data = string_map(raw.body, "data")
    for domain, value in sorted(data.items()):
        if domain.startswith("_"):  # Knative's `_example` documentation key
            continue
        why = dns_subdomain_error(domain)
        if why is not None:
            raise ObjectError(f"data.{domain[:100]}", f"is not a domain: {why}")
        selector: tuple[tuple[str, str], ...] = ()
        text = str(value or "").strip()
        if text:
            try:
                parsed = yamltext.load(text, _SELECTOR_LIMITS)
            except yamltext.YamlError as e:
                raise ObjectError(f"data.{domain}", f"is not a valid selector: {e}") from None
            labels = parsed.get("selector") if isinstance(parsed, Mapping) else None
            if not isinstance(labels, Mapping):
                raise ObjectError(f"data.{domain}", "must be empty or 'selector: {label: value}'")
            selector = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        rules.append(DomainRule(domain, selector))
    return replace(base, domains=tuple(rules) or (DomainRule(DEFAULT_DOMAIN),))


def parse_config_network(raw: RawObject, base: NetworkConfig) -> NetworkConfig:
    data = string_map(raw.body, "data")
    domain_t = _check_template(
        "domain-template",
        str(data.get("domain-template", DEFAULT_DOMAIN_TEMPLATE)),
        {"Name", "Namespace", "Domain", "Tag"},
    )
    tag_t = _check_template(
        "tag-template", str(data.get("tag-template", DEFAULT_TAG_TEMPLATE)), {"Name", "Tag"}
    )
    _check_domain_template(domain_t)
    _check_tag_template(tag_t)
    header = str(data.get("tag-header-based-routing", "disabled")).lower()
    if header not in ("enabled", "disabled", "true", "false"):
        raise ObjectError("data.tag-header-based-routing", "must be 'enabled' or 'disabled'")
    return replace(
        base,
        domain_template=domain_t,
        tag_template=tag_t,
        tag_header_routing=header in ("enabled", "true"),
    )


def external_host(config: NetworkConfig, *, name: str, namespace: str, domain: str) -> str:
    """The Route's public host; ObjectError (`metadata.name`) when it is no valid DNS name,
    as a long name with a long tag can make it (Knative refuses such a Route too)."""
    host = render(
        config.domain_template, Name=name, Namespace=namespace, Domain=domain, Tag=""
    ).lower()
    why = dns_subdomain_error(host)
    if why is not None:
        raise ObjectError("metadata.name", f"gives host {host[:100]!r}: {why}")
    return host


def tag_name(config: NetworkConfig, *, name: str, tag: str) -> str:
    return render(config.tag_template, Name=name, Tag=tag)


def cluster_local_hosts(name: str, namespace: str) -> tuple[str, ...]:
    """A Route's in-cluster names, as Knative's cluster-local gateway answers them."""
    base = f"{name}.{namespace}"
    return (f"{base}.svc.cluster.local", f"{base}.svc", base)


def cluster_local_key(host: str) -> tuple[str, str]:
    """The first two DNS labels of a cluster-local host: what the internal listener routes on.

    Knative names and namespaces are DNS labels, so for all three forms of one
    name (`name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`) it is
    `(name, ns)` and one scope serves them (translate/scopes.py). A tag-template
    that puts a dot in a tagged name can make two Routes give the same key;
    one scope cannot serve both, so the resolver claims cluster-local hosts by it.
    """
    first, second = host.split(".", 2)[:2]
    return (first, second)
