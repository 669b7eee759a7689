"""Internal TLS from config-xds `cluster-cert-secret`: which Secret is served, the listener it
gets, what a rotation, a bad or missing Secret and turning the key off each send."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from knative_xds import synth
from knative_xds.cache import check_consistency
from knative_xds.commands.common import add_gateway_flags, settings
from knative_xds.model import Certificate, GatewayOptions, ObjectKey, Problem, Resolver
from knative_xds.model.cluster_cert import cluster_cert_key, cluster_cert_problem
from knative_xds.model.gateway_options import parse_config_xds
from knative_xds.model.objects import RawObject
from knative_xds.resources import LISTENER, SECRET
from knative_xds.translate import GatewayConfig, Translator
from knative_xds.translate.internal_tls import INTERNAL_TLS

from .helpers import Resources, apply_delta, assert_proto_equal, changes, deleted
from .kingress_fixtures import (
    a_kingress,
    a_path,
    a_rule,
    a_secret,
    a_service,
    a_split,
    a_tls,
    rotated,
)

SYSTEM = "knative-serving"
NAME = "cluster-certs"
SECRET_NAME = f"{SYSTEM}/{NAME}"
CONFIG_XDS = (("ConfigMap", f"{SYSTEM}/config-xds", "data.cluster-cert-secret"),)


def config_xds(**data: str) -> dict[str, Any]:
    return synth.config_map("config-xds", {k.replace("_", "-"): v for k, v in data.items()})


def hello() -> list[dict[str, Any]]:
    return [
        synth.revision("hello-1", ready=True),
        synth.route("hello", [synth.target("hello-1", 100)]),
    ]


def no_key(secret: dict[str, Any]) -> dict[str, Any]:
    del secret["data"]["tls.key"]
    return secret


@dataclass
class Plane:
    """A Resolver and a Translator fed together, problems allowed (they are the point)."""

    resolver: Resolver = field(default_factory=Resolver)
    translator: Translator = field(default_factory=lambda: Translator(GatewayConfig()))
    resources: Resources = field(default_factory=dict)

    def apply(self, *objs: Mapping[str, Any], delete: bool = False) -> dict[str, set[str]]:
        """The names the delta touched, per type; the result checked as the cache checks it."""
        update = self.resolver.apply(deleted(*objs) if delete else changes(*objs))
        delta = self.translator.translate(update)
        apply_delta(self.resources, delta)
        changed = {t: frozenset(named) for t, named in delta.changes.items()}
        check_consistency(self.resources, changed)
        return {t: set(named) for t, named in delta.changes.items()}

    def names(self, type_url: str) -> set[str]:
        return set(self.resources.get(type_url, {}))

    def problems(self) -> set[tuple[str, str, str]]:
        return {(p.kind, p.key, p.field) for p in self.resolver.problems()}

    def listener(self, name: str) -> listener_pb2.Listener:
        return self.resources[LISTENER][name].message(listener_pb2.Listener)  # type: ignore[return-value]


def served(*objs: dict[str, Any]) -> Plane:
    plane = Plane()
    plane.apply(*hello(), *objs)
    return plane


# -- which Secret, and what is served --------------------------------------------------------

ROWS: dict[str, tuple[list[dict[str, Any]], set[str], tuple[tuple[str, str, str], ...]]] = {
    "no key: no TLS listener": ([], set(), ()),
    "empty value (Kourier's default): off, no problem": (
        [config_xds(cluster_cert_secret=""), a_secret(NAME, ns=SYSTEM)],
        set(),
        (),
    ),
    "the Secret in knative-serving: its listener and its secret": (
        [config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM)],
        {SECRET_NAME},
        (),
    ),
    "no such Secret: no listener, a problem on the key": (
        [config_xds(cluster_cert_secret=NAME)],
        set(),
        CONFIG_XDS,
    ),
    "a Secret of that name in another namespace is not it": (
        [config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns="default")],
        set(),
        CONFIG_XDS,
    ),
    "a Secret with no tls.key: its own problem names the key, and no listener": (
        [config_xds(cluster_cert_secret=NAME), no_key(a_secret(NAME, ns=SYSTEM))],
        set(),
        (*CONFIG_XDS, ("Secret", SECRET_NAME, "data.tls.key")),
    ),
}


@pytest.mark.parametrize(("objs", "secrets", "problems"), ROWS.values(), ids=ROWS.keys())
def test_cluster_cert_secret_gives_a_tls_listener_only_with_its_secret(
    objs: list[dict[str, Any]], secrets: set[str], problems: tuple[tuple[str, str, str], ...]
) -> None:
    plane = served(*objs)
    assert plane.names(SECRET) == secrets
    expected = {"external", "internal"} | ({INTERNAL_TLS} if secrets else set())
    assert plane.names(LISTENER) == expected
    assert plane.problems() == set(problems)


def test_the_tls_listener_routes_as_the_internal_one_with_the_secret_over_sds() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    tls, internal = plane.listener(INTERNAL_TLS), plane.listener("internal")

    assert tls.address.socket_address.port_value == 8444
    assert list(tls.listener_filters) == []  # no PROXY header on the cluster-local side
    [chain] = tls.filter_chains
    assert not chain.HasField("filter_chain_match")  # one certificate for every host
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    [sds] = context.common_tls_context.tls_certificate_sds_secret_configs
    assert sds.name == SECRET_NAME
    assert sds.sds_config.HasField("ads")
    # The same scoped routes as the plain listener: only the stats are its own.
    tls_manager, internal_manager = hcm.HttpConnectionManager(), hcm.HttpConnectionManager()
    chain.filters[-1].typed_config.Unpack(tls_manager)
    internal.filter_chains[0].filters[-1].typed_config.Unpack(internal_manager)
    assert tls_manager.stat_prefix == INTERNAL_TLS
    tls_manager.stat_prefix = internal_manager.stat_prefix
    assert_proto_equal(tls_manager, internal_manager)
    assert [f.name for f in chain.filters] == [f.name for f in internal.filter_chains[0].filters]


def test_the_tls_policy_of_config_xds_applies_to_the_cluster_local_listener() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    touched = plane.apply(
        config_xds(cluster_cert_secret=NAME, cipher_suites="ECDHE-RSA-AES128-GCM-SHA256")
    )
    # The plain listeners hold no TLS: only the HTTPS one is re-sent.
    assert touched == {LISTENER: {INTERNAL_TLS}}
    context = tls_pb2.DownstreamTlsContext()
    plane.listener(INTERNAL_TLS).filter_chains[0].transport_socket.typed_config.Unpack(context)
    assert list(context.common_tls_context.tls_params.cipher_suites) == [
        "ECDHE-RSA-AES128-GCM-SHA256"
    ]


# -- changes: each costs what it changes ------------------------------------------------------


def test_a_rotation_re_sends_the_secret_alone() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    touched = plane.apply(a_secret(NAME, ns=SYSTEM, cert=rotated("second")))
    assert touched == {SECRET: {SECRET_NAME}}
    assert rotated("second") in plane.resources[SECRET][SECRET_NAME].body


def test_a_bad_edit_of_the_secret_keeps_the_last_certificate_and_names_the_key() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    before = plane.resources[SECRET][SECRET_NAME]

    assert plane.apply(no_key(a_secret(NAME, ns=SYSTEM, cert=rotated("bad")))) == {}
    assert plane.resources[SECRET][SECRET_NAME] is before
    # The last good parse of the Secret serves on; its problem names the key.
    assert plane.problems() == {("Secret", SECRET_NAME, "data.tls.key")}


def test_a_deleted_secret_keeps_serving_its_last_certificate_with_a_problem() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    assert plane.apply(a_secret(NAME, ns=SYSTEM), delete=True) == {}
    assert plane.names(LISTENER) == {"external", "internal", INTERNAL_TLS}
    assert plane.problems() == set(CONFIG_XDS)


def test_a_secret_that_comes_late_brings_the_listener_and_clears_the_problem() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME))
    touched = plane.apply(a_secret(NAME, ns=SYSTEM))
    assert touched == {SECRET: {SECRET_NAME}, LISTENER: {INTERNAL_TLS}}
    assert plane.problems() == set()


def test_turning_the_key_off_removes_the_listener_and_its_secret_together() -> None:
    plane = served(config_xds(cluster_cert_secret=NAME), a_secret(NAME, ns=SYSTEM))
    touched = plane.apply(config_xds())
    # The plain listeners' options did not change: they are not re-sent.
    assert touched == {SECRET: {SECRET_NAME}, LISTENER: {INTERNAL_TLS}}
    assert plane.names(LISTENER) == {"external", "internal"} and plane.names(SECRET) == set()


def test_naming_another_secret_swaps_the_certificate_under_the_listener() -> None:
    plane = served(
        config_xds(cluster_cert_secret=NAME),
        a_secret(NAME, ns=SYSTEM),
        a_secret("next-certs", ns=SYSTEM, cert=rotated("next")),
    )
    touched = plane.apply(config_xds(cluster_cert_secret="next-certs"))
    assert touched[SECRET] == {SECRET_NAME, f"{SYSTEM}/next-certs"}
    assert INTERNAL_TLS in touched[LISTENER]
    assert plane.names(SECRET) == {f"{SYSTEM}/next-certs"}
    assert plane.resources[LISTENER][INTERNAL_TLS].refs == (f"{SYSTEM}/next-certs",)


def test_a_kingress_naming_the_same_secret_shares_its_sds_secret_and_leaves_it_served() -> None:
    shop = a_kingress(
        "shop",
        a_rule("shop.example.com", paths=[a_path(a_split("hello-1", 80, ns=SYSTEM))]),
        ns=SYSTEM,
        tls=[a_tls("shop.example.com", secret=NAME, ns=SYSTEM)],
    )
    plane = served(
        config_xds(cluster_cert_secret=NAME),
        a_secret(NAME, ns=SYSTEM),
        shop,
        a_service("hello-1", ns=SYSTEM, revision="hello-1"),
    )
    assert plane.names(SECRET) == {SECRET_NAME}
    assert plane.names(LISTENER) == {"external", "internal", "external-tls", INTERNAL_TLS}
    # The KIngress going away leaves the gateway's own use of the Secret.
    plane.apply(shop, delete=True)
    assert plane.names(SECRET) == {SECRET_NAME}
    assert plane.names(LISTENER) == {"external", "internal", INTERNAL_TLS}


# -- the pure parts ----------------------------------------------------------------------------

CERT = Certificate(ObjectKey(SYSTEM, NAME), b"chain", b"key")
PROBLEM_ROWS: dict[str, tuple[str, object, dict, str | None]] = {
    "off": ("", None, {}, None),
    "parsed": (NAME, CERT, {}, None),
    "missing, never served": (NAME, None, {}, "no cluster-local TLS listener"),
    "missing, served before": (NAME, None, {CERT.key: CERT}, "keeps its last good"),
}


@pytest.mark.parametrize(
    ("name", "parsed", "served_now", "says"), PROBLEM_ROWS.values(), ids=PROBLEM_ROWS.keys()
)
def test_the_problem_says_what_is_served(
    name: str, parsed: object, served_now: dict, says: str | None
) -> None:
    options = GatewayOptions(cluster_cert_secret=name)
    problem = cluster_cert_problem(options, parsed=parsed, served=served_now, origin="c.yaml")
    if says is None:
        assert problem is None
        return
    assert isinstance(problem, Problem)
    assert (problem.origin, problem.field) == ("c.yaml", "data.cluster-cert-secret")
    assert f"Secret {SYSTEM}/{NAME}" in problem.message and says in problem.message


def test_the_secret_is_looked_for_in_knative_serving() -> None:
    raw = RawObject.from_dict(config_xds(cluster_cert_secret=f" {NAME} "), "test")
    assert cluster_cert_key(parse_config_xds(raw)) == ObjectKey(SYSTEM, NAME)
    assert cluster_cert_key(GatewayOptions()) is None


def test_the_port_is_a_flag_with_kouriers_default() -> None:
    parser = argparse.ArgumentParser()
    add_gateway_flags(parser, listen="127.0.0.1")
    parser.add_argument("--ingress-class", default="x")
    assert settings(parser.parse_args([])).gateway.internal_tls_port == 8444
    chosen = settings(parser.parse_args(["--internal-tls-port", "9444"]))
    assert chosen.gateway.internal_tls_port == 9444
