"""Knative's ConfigMaps in `knative-serving`, each read as a whole into its settings.

`config-domain` and `config-network` together give the `NetworkConfig`;
`config-xds` gives the gateway's `GatewayOptions`. A ConfigMap that is bad
keeps the fields it controls at their last good reading, and its Problem says
why; one that is deleted gives its defaults back.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import replace

from . import network as net
from .gateway_options import parse_config_xds
from .kinds import CONFIG_MAP, GATEWAY_CONFIG_MAP, KNATIVE_NAMESPACE, Ident
from .objects import ObjectError, RawObject
from .types import ActivatorMode, GatewayOptions, ObjectKey, Problem

Problems = MutableMapping[Ident, Problem]

_NETWORK_READERS = (
    ("config-domain", net.parse_config_domain),
    ("config-network", net.parse_config_network),
)


def problem_of(origin: str, ident: Ident, error: Exception) -> Problem:
    """An error as the object's Problem: its field when a rule named one, else the
    error no rule foresaw (the rest keeps being served)."""
    if isinstance(error, ObjectError):
        return Problem(origin, ident[0], str(ident[1]), error.field, error.message)
    text = str(error)
    text = text if len(text) <= 200 else f"{text[:200]}..."
    return Problem(
        origin, ident[0], str(ident[1]), "", f"cannot be read ({type(error).__name__}: {text})"
    )


def read_network(
    config_maps: Mapping[Ident, RawObject],
    kept: MutableMapping[Ident, object],
    problems: Problems,
    mode: ActivatorMode,
) -> net.NetworkConfig:
    """The network settings; `kept` holds each ConfigMap's last good reading."""
    config = net.NetworkConfig(activator_mode=mode)
    for name, read in _NETWORK_READERS:
        ident = (CONFIG_MAP, ObjectKey(KNATIVE_NAMESPACE, name))
        raw = config_maps.get(ident)
        if raw is None:
            continue
        try:
            config = read(raw, config)
            problems.pop(ident, None)
        except Exception as e:  # a ConfigMap must never stop the pipeline
            problems[ident] = problem_of(raw.origin, ident, e)
            last = kept.get(ident)
            if isinstance(last, net.NetworkConfig):
                config = _carry_fields(last, config, name)
            continue
        kept[ident] = config
    return config


def read_gateway(
    config_maps: Mapping[Ident, RawObject], problems: Problems, last: GatewayOptions
) -> GatewayOptions:
    """`config-xds`: defaults when it is absent, `last` while it is bad."""
    ident = (CONFIG_MAP, ObjectKey(KNATIVE_NAMESPACE, GATEWAY_CONFIG_MAP))
    raw = config_maps.get(ident)
    if raw is None:
        return GatewayOptions()
    try:
        options = parse_config_xds(raw)
    except Exception as e:  # a ConfigMap must never stop the pipeline
        problems[ident] = problem_of(raw.origin, ident, e)
        return last
    problems.pop(ident, None)
    return options


def _carry_fields(
    kept: net.NetworkConfig, config: net.NetworkConfig, name: str
) -> net.NetworkConfig:
    """Carry over the fields one ConfigMap controls from its last good reading."""
    if name == "config-domain":
        return replace(config, domains=kept.domains)
    return replace(
        config,
        domain_template=kept.domain_template,
        tag_template=kept.tag_template,
        tag_header_routing=kept.tag_header_routing,
    )
