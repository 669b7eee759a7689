"""ConfigMap `config-xds`: each key to its value or its problem, the resolver keeping the last
good options, and the translator re-building listeners only."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from knative_xds import synth
from knative_xds.model import AccessLogFormat, GatewayOptions, RawObject, Resolver
from knative_xds.model.gateway_options import DEFAULT_JSON_FIELDS, parse_config_xds
from knative_xds.model.objects import ObjectError
from knative_xds.model.types import ExtAuthz, ExtAuthzProtocol, Tracing, TracingProtocol
from knative_xds.resources import CLUSTER, LISTENER
from knative_xds.translate.access_log import access_logs, tls_parameters
from knative_xds.translate.ext_authz import EXT_AUTHZ_CLUSTER, EXT_AUTHZ_FILTER
from knative_xds.translate.listeners import tls_listener_resource
from knative_xds.translate.tracing import OTEL_TRACER, TRACING_CLUSTER

from .helpers import Gateway, changes, deleted

XDS = "config-xds"


def parse(data: dict[str, str]) -> GatewayOptions:
    return parse_config_xds(RawObject.from_dict(synth.config_map(XDS, data), "test"))


GOOD: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "empty": ({}, {}),
    "access-log-on": ({"enable-service-access-logging": "true"}, {"access_log": True}),
    "access-log-go-bool": ({"enable-service-access-logging": "T"}, {"access_log": True}),
    "access-log-off": ({"enable-service-access-logging": "false"}, {"access_log": False}),
    "template": (
        {"service-access-log-template": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"},
        {"access_log_template": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"},
    ),
    "template-with-length": (
        {"service-access-log-template": "[%START_TIME%] %REQ(USER-AGENT):10%"},
        {"access_log_template": "[%START_TIME%] %REQ(USER-AGENT):10%"},
    ),
    "json-default-fields": (
        {"service-access-log-format": "json"},
        {"access_log_format": AccessLogFormat.JSON, "access_log_json": DEFAULT_JSON_FIELDS},
    ),
    "json-template": (
        {
            "service-access-log-format": "JSON",
            "service-access-log-template": '{"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}',
        },
        {
            "access_log_format": AccessLogFormat.JSON,
            "access_log_json": (("code", "%RESPONSE_CODE%"), ("path", "%REQ(:PATH)%")),
        },
    ),
    "text-format": ({"service-access-log-format": "text"}, {}),
    "proxy-protocol": ({"enable-proxy-protocol": "true"}, {"proxy_protocol": True}),
    "ciphers": (
        {"cipher-suites": "ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384,"},
        {"cipher_suites": ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")},
    ),
    "ciphers-deduplicated": (
        {"cipher-suites": "AES128-SHA,AES128-SHA"},
        {"cipher_suites": ("AES128-SHA",)},
    ),
    "min-tls-1.3": ({"min-tls-version": "1.3"}, {"min_tls_version": "1.3"}),
    "min-tls-envoy-spelling": ({"min-tls-version": "TLSv1_2"}, {"min_tls_version": "1.2"}),
    "idle-seconds": ({"stream-idle-timeout": "300s"}, {"stream_idle_timeout": 300.0}),
    "idle-go-compound": ({"stream-idle-timeout": "1h30m"}, {"stream_idle_timeout": 5400.0}),
    "idle-ms": ({"stream-idle-timeout": "1500ms"}, {"stream_idle_timeout": 1.5}),
    "idle-off": ({"stream-idle-timeout": "0"}, {"stream_idle_timeout": 0.0}),
    "trusted-hops": ({"trusted-hops": "2"}, {"trusted_hops": 2}),
    "cluster-cert-secret": (
        {"cluster-cert-secret": "knative-serving-certs"},
        {"cluster_cert_secret": "knative-serving-certs"},
    ),
    # Kourier's tracing keys (and any other) are left unread.
    "unread-keys": ({"zipkin-endpoint": "zipkin:9411", "_example": "docs"}, {}),
    # The extauthz-* keys mean nothing without extauthz-host, as in Kourier.
    "extauthz-off": ({"extauthz-host": "", "extauthz-timeout": "soon"}, {}),
    "extauthz-grpc-defaults": (
        {"extauthz-host": "authz.auth:9000"},
        {"ext_authz": ExtAuthz("authz.auth", 9000)},
    ),
    "extauthz-http-all-keys": (
        {
            "extauthz-host": "10.0.0.9:8080",
            "extauthz-protocol": "http",
            "extauthz-failure-mode-allow": "true",
            "extauthz-max-request-body-bytes": "1024",
            "extauthz-timeout": "500",
            "extauthz-path-prefix": "/verify",
        },
        {
            "ext_authz": ExtAuthz(
                "10.0.0.9", 8080, ExtAuthzProtocol.HTTP, True, 1024, 500, "/verify"
            )
        },
    ),
    "extauthz-https-ipv6": (
        {"extauthz-host": "[::1]:443", "extauthz-protocol": "https"},
        {"ext_authz": ExtAuthz("::1", 443, ExtAuthzProtocol.HTTPS)},
    ),
    "extauthz-empty-protocol-is-grpc": (
        {"extauthz-host": "authz:9000", "extauthz-protocol": ""},
        {"ext_authz": ExtAuthz("authz", 9000)},
    ),
    # The tracing-* keys mean nothing without tracing-endpoint, as in Kourier.
    "tracing-off": ({"tracing-endpoint": "", "tracing-sampling-rate": "lots"}, {}),
    "tracing-kourier-grpc-url-defaults": (
        {"tracing-endpoint": "http://otel.observability.svc:4317"},
        {"tracing": Tracing("otel.observability.svc", 4317)},
    ),
    "tracing-host-port": (
        {"tracing-endpoint": "10.0.0.5:4317"},
        {"tracing": Tracing("10.0.0.5", 4317)},
    ),
    "tracing-http-protobuf-all-keys": (
        {
            "tracing-endpoint": "http://otel:4318/v1/traces",
            "tracing-protocol": "http/protobuf",
            "tracing-sampling-rate": "0.25",
            "tracing-service-name": "edge",
        },
        {"tracing": Tracing("otel", 4318, TracingProtocol.HTTP, "/v1/traces", 0.25, "edge")},
    ),
    "tracing-http-own-path-ipv6": (
        {"tracing-endpoint": "http://[::1]:9000/otlp/spans", "tracing-protocol": "http"},
        {"tracing": Tracing("::1", 9000, TracingProtocol.HTTP, "/otlp/spans")},
    ),
    "tracing-http-no-path-is-otlps": (
        {"tracing-endpoint": "http://otel:4318", "tracing-protocol": "http/protobuf"},
        {"tracing": Tracing("otel", 4318, TracingProtocol.HTTP, "/v1/traces")},
    ),
    "tracing-empty-keys-are-kourier-defaults": (
        {
            "tracing-endpoint": "otel:4317",
            "tracing-protocol": "",
            "tracing-sampling-rate": "",
            "tracing-service-name": "",
        },
        {
            "tracing": Tracing(
                "otel", 4317, TracingProtocol.GRPC, "/v1/traces", 1.0, "kourier-knative"
            )
        },
    ),
    "tracing-rate-zero-go-float": (
        {"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "0e0"},
        {"tracing": Tracing("otel", 4317, sampling_rate=0.0)},
    ),
}


@pytest.mark.parametrize(("data", "fields"), GOOD.values(), ids=GOOD.keys())
def test_config_xds_key_gives_its_value(data: dict[str, str], fields: dict[str, Any]) -> None:
    assert parse(data) == GatewayOptions(**fields)


BAD: dict[str, tuple[dict[str, str], str, str]] = {
    "bool": ({"enable-service-access-logging": "yes"}, "enable-service-access-logging", "boolean"),
    "proxy-bool": ({"enable-proxy-protocol": "on"}, "enable-proxy-protocol", "boolean"),
    "unknown-command": (
        {"service-access-log-template": "%METHOD% %PATH%"},
        "service-access-log-template",
        "unknown access log command %METHOD%",
    ),
    "stray-percent": (
        {"service-access-log-template": "100% %DURATION%"},
        "service-access-log-template",
        "opens no command",
    ),
    "json-not-json": (
        {"service-access-log-format": "json", "service-access-log-template": "%DURATION%"},
        "service-access-log-template",
        "must be a JSON object",
    ),
    "json-not-strings": (
        {"service-access-log-format": "json", "service-access-log-template": '{"d": 1}'},
        "service-access-log-template",
        "must be a string",
    ),
    "json-bad-command": (
        {"service-access-log-format": "json", "service-access-log-template": '{"d": "%NOPE%"}'},
        "service-access-log-template",
        "%NOPE%",
    ),
    "format": ({"service-access-log-format": "xml"}, "service-access-log-format", "'text'"),
    "cipher": (
        {"cipher-suites": "ECDHE-RSA-AES128-GCM-SHA256,TLS_AES_128_GCM_SHA256"},
        "cipher-suites",
        "unknown cipher suite 'TLS_AES_128_GCM_SHA256'",
    ),
    "tls-version": ({"min-tls-version": "1.4"}, "min-tls-version", "use one of"),
    "idle-no-unit": ({"stream-idle-timeout": "300"}, "stream-idle-timeout", "not a duration"),
    "idle-empty": ({"stream-idle-timeout": ""}, "stream-idle-timeout", "empty"),
    "idle-negative": ({"stream-idle-timeout": "-5s"}, "stream-idle-timeout", "not a duration"),
    "idle-huge": ({"stream-idle-timeout": "9999h"}, "stream-idle-timeout", "over 7 days"),
    "hops-negative": ({"trusted-hops": "-1"}, "trusted-hops", "whole number"),
    "hops-huge": ({"trusted-hops": "1000"}, "trusted-hops", "whole number"),
    "secret-name": ({"cluster-cert-secret": "Bad_Name"}, "cluster-cert-secret", "Secret name"),
    "extauthz-no-port": ({"extauthz-host": "authz"}, "extauthz-host", "host:port"),
    "extauthz-port-zero": ({"extauthz-host": "authz:0"}, "extauthz-host", "host:port"),
    "extauthz-port-huge": ({"extauthz-host": "authz:70000"}, "extauthz-host", "host:port"),
    "extauthz-v6-no-brackets": ({"extauthz-host": "::1:9000"}, "extauthz-host", "host:port"),
    "extauthz-bad-host": ({"extauthz-host": "Auth_Z:9000"}, "extauthz-host", "host name"),
    "extauthz-protocol": (
        {"extauthz-host": "a:1", "extauthz-protocol": "grpcs"},
        "extauthz-protocol",
        "grpc, http or https",
    ),
    "extauthz-failure-bool": (
        {"extauthz-host": "a:1", "extauthz-failure-mode-allow": "maybe"},
        "extauthz-failure-mode-allow",
        "boolean",
    ),
    "extauthz-body-zero": (
        {"extauthz-host": "a:1", "extauthz-max-request-body-bytes": "0"},
        "extauthz-max-request-body-bytes",
        "whole number from 1",
    ),
    "extauthz-body-over-uint32": (
        {"extauthz-host": "a:1", "extauthz-max-request-body-bytes": "4294967296"},
        "extauthz-max-request-body-bytes",
        "whole number",
    ),
    "extauthz-timeout-unit": (
        {"extauthz-host": "a:1", "extauthz-timeout": "2s"},
        "extauthz-timeout",
        "(ms)",
    ),
    "extauthz-timeout-negative": (
        {"extauthz-host": "a:1", "extauthz-timeout": "-1"},
        "extauthz-timeout",
        "whole number",
    ),
    "extauthz-path-relative": (
        {"extauthz-host": "a:1", "extauthz-path-prefix": "verify"},
        "extauthz-path-prefix",
        "starting with '/'",
    ),
    "extauthz-path-query": (
        {"extauthz-host": "a:1", "extauthz-path-prefix": "/v?x=1"},
        "extauthz-path-prefix",
        "'?'",
    ),
    "tracing-no-port": ({"tracing-endpoint": "http://otel"}, "tracing-endpoint", "host:port"),
    "tracing-bare-host": ({"tracing-endpoint": "otel"}, "tracing-endpoint", "host:port"),
    "tracing-https": ({"tracing-endpoint": "https://otel:4317"}, "tracing-endpoint", "TLS"),
    "tracing-scheme": ({"tracing-endpoint": "grpc://otel:4317"}, "tracing-endpoint", "http://"),
    "tracing-bad-host": (
        {"tracing-endpoint": "http://Otel_C:4317"},
        "tracing-endpoint",
        "host name",
    ),
    "tracing-query": (
        {"tracing-endpoint": "http://otel:4318/v1/traces?x=1"},
        "tracing-endpoint",
        "no query",
    ),
    "tracing-protocol": (
        {"tracing-endpoint": "otel:4317", "tracing-protocol": "zipkin"},
        "tracing-protocol",
        "grpc or http/protobuf",
    ),
    "tracing-rate-over-1": (
        {"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "1.5"},
        "tracing-sampling-rate",
        "0.0 to 1.0",
    ),
    "tracing-rate-negative": (
        {"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "-0.1"},
        "tracing-sampling-rate",
        "0.0 to 1.0",
    ),
    "tracing-rate-nan": (
        {"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "NaN"},
        "tracing-sampling-rate",
        "0.0 to 1.0",
    ),
    "tracing-rate-percent": (
        {"tracing-endpoint": "otel:4317", "tracing-sampling-rate": "50%"},
        "tracing-sampling-rate",
        "number",
    ),
}


@pytest.mark.parametrize(("data", "key", "message"), BAD.values(), ids=BAD.keys())
def test_config_xds_bad_value_is_an_error_on_its_key(
    data: dict[str, str], key: str, message: str
) -> None:
    with pytest.raises(ObjectError) as caught:
        parse(data)
    assert caught.value.field == f"data.{key}"
    assert message in caught.value.message


# -- the resolver: problems name the ConfigMap and key; the last good options serve ---------


def config_xds(**data: str) -> dict:
    return synth.config_map(XDS, {k.replace("_", "-"): v for k, v in data.items()})


def test_a_bad_edit_is_a_problem_and_the_last_good_options_keep_serving() -> None:
    resolver = Resolver()
    good = resolver.apply(changes(config_xds(enable_service_access_logging="true")))
    assert good.state.gateway.access_log and resolver.problems() == ()

    bad = resolver.apply(changes(config_xds(trusted_hops="many")))

    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == (
        "ConfigMap",
        "knative-serving/config-xds",
        "data.trusted-hops",
    )
    assert bad.state.gateway == good.state.gateway

    fixed = resolver.apply(changes(config_xds(trusted_hops="1")))
    assert resolver.problems() == ()
    assert fixed.state.gateway == GatewayOptions(trusted_hops=1)


def test_deleting_config_xds_brings_back_the_defaults() -> None:
    resolver = Resolver()
    resolver.apply(changes(config_xds(enable_proxy_protocol="true")))
    update = resolver.apply(deleted(config_xds()))
    assert update.state.gateway == GatewayOptions()


def test_a_config_xds_in_another_namespace_is_not_read() -> None:
    other = config_xds(enable_proxy_protocol="true")
    other["metadata"]["namespace"] = "default"
    assert Resolver().apply(changes(other)).state.gateway == GatewayOptions()


# -- the translator: options change listeners and nothing else ----------------------------


def served_gateway() -> Gateway:
    gateway = Gateway()
    gateway.apply(
        synth.revision("hello-1", ready=True),
        synth.route("hello", [synth.target("hello-1", 100)]),
    )
    return gateway


def manager(gateway: Gateway, listener: str) -> hcm.HttpConnectionManager:
    msg = gateway.get(LISTENER, listener, listener_pb2.Listener)
    out = hcm.HttpConnectionManager()
    msg.filter_chains[0].filters[-1].typed_config.Unpack(out)
    return out


def test_an_access_log_switch_changes_the_listeners_only() -> None:
    gateway = served_gateway()
    assert manager(gateway, "external").access_log == []

    touched = gateway.apply(config_xds(enable_service_access_logging="true"))

    assert touched == {LISTENER: {"external", "internal"}}
    [log] = manager(gateway, "internal").access_log
    assert log.name == "envoy.access_loggers.stdout"
    # Unchanged options (a reordered or repeated ConfigMap) re-send nothing.
    assert gateway.apply(config_xds(enable_service_access_logging="1")) == {}


def test_proxy_protocol_is_on_the_external_listener_only() -> None:
    gateway = served_gateway()
    touched = gateway.apply(config_xds(enable_proxy_protocol="true"))
    assert touched == {LISTENER: {"external"}}
    external = gateway.get(LISTENER, "external", listener_pb2.Listener)
    internal = gateway.get(LISTENER, "internal", listener_pb2.Listener)
    assert [f.name for f in external.listener_filters] == ["envoy.filters.listener.proxy_protocol"]
    assert list(internal.listener_filters) == []


def test_trusted_hops_and_idle_timeout_from_config_xds_win_over_the_flags() -> None:
    gateway = served_gateway()
    assert manager(gateway, "external").xff_num_trusted_hops == 0
    gateway.apply(config_xds(trusted_hops="2", stream_idle_timeout="5m"))
    m = manager(gateway, "external")
    assert (m.xff_num_trusted_hops, m.stream_idle_timeout.seconds) == (2, 300)


def test_template_and_json_access_logs() -> None:
    [text] = access_logs(GatewayOptions(access_log=True, access_log_template="%DURATION%"))
    logger = stream_pb2.StdoutAccessLog()
    text.typed_config.Unpack(logger)
    assert logger.log_format.text_format_source.inline_string == "%DURATION%\n"
    [js] = access_logs(
        parse({"enable-service-access-logging": "true", "service-access-log-format": "json"})
    )
    js.typed_config.Unpack(logger)
    assert dict(logger.log_format.json_format)["response_code"] == "%RESPONSE_CODE%"
    [plain] = access_logs(GatewayOptions(access_log=True))
    plain.typed_config.Unpack(logger)
    assert not logger.HasField("log_format"), "Envoy's default line"


def test_tls_policy() -> None:
    assert tls_parameters(GatewayOptions()) is None
    params = tls_parameters(GatewayOptions(cipher_suites=("AES128-SHA",), min_tls_version="1.3"))
    assert params == common_pb2.TlsParameters(
        cipher_suites=["AES128-SHA"],
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    )
    assert tls_pb2.CommonTlsContext(tls_params=params).tls_params.cipher_suites == ["AES128-SHA"]


def test_the_https_listener_reads_the_proxy_header_before_the_client_hello() -> None:
    options = GatewayOptions(proxy_protocol=True, cipher_suites=("AES128-SHA",))
    listener = tls_listener_resource(
        address="127.0.0.1",
        port=8443,
        chains={"default/shop-tls": ("shop.example.com",)},
        options=options,
    ).message(listener_pb2.Listener)
    assert [f.name for f in listener.listener_filters] == [
        "envoy.filters.listener.proxy_protocol",
        "envoy.filters.listener.tls_inspector",
    ]
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    assert list(context.common_tls_context.tls_params.cipher_suites) == ["AES128-SHA"]


# -- external authorization: the filter on every listener, its cluster in CDS -------------


def test_an_authorizer_adds_its_cluster_and_filter_and_removing_it_takes_both_away() -> None:
    gateway = served_gateway()
    touched = gateway.apply(config_xds(extauthz_host="authz.auth:9000"))
    assert touched == {CLUSTER: {EXT_AUTHZ_CLUSTER}, LISTENER: {"external", "internal"}}
    for listener in ("external", "internal"):
        filters = [f.name for f in manager(gateway, listener).http_filters]
        assert filters == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]
    # A new timeout changes the filter alone: the cluster stays as it was.
    touched = gateway.apply(config_xds(extauthz_host="authz.auth:9000", extauthz_timeout="1"))
    assert touched == {LISTENER: {"external", "internal"}}

    touched = gateway.apply(config_xds())
    assert touched == {CLUSTER: {EXT_AUTHZ_CLUSTER}, LISTENER: {"external", "internal"}}
    assert [f.name for f in manager(gateway, "external").http_filters] == [
        "envoy.filters.http.router"
    ]


# -- tracing: the tracer on every connection manager, the collector's cluster in CDS ----------


def test_tracing_adds_its_cluster_and_tracer_a_rate_change_is_listeners_only_and_off_takes_both() -> (
    None
):
    gateway = served_gateway()
    assert not manager(gateway, "external").HasField("tracing")
    touched = gateway.apply(config_xds(tracing_endpoint="http://otel.observability:4317"))
    assert touched == {CLUSTER: {TRACING_CLUSTER}, LISTENER: {"external", "internal"}}
    for listener in ("external", "internal"):
        m = manager(gateway, listener)
        assert m.tracing.provider.name == OTEL_TRACER
        assert m.tracing.overall_sampling.value == 100.0
        assert m.generate_request_id.value is True

    touched = gateway.apply(
        config_xds(tracing_endpoint="http://otel.observability:4317", tracing_sampling_rate="0.1")
    )
    assert touched == {LISTENER: {"external", "internal"}}
    assert abs(manager(gateway, "internal").tracing.overall_sampling.value - 10.0) < 1e-9

    touched = gateway.apply(config_xds())
    assert touched == {CLUSTER: {TRACING_CLUSTER}, LISTENER: {"external", "internal"}}
    assert not manager(gateway, "external").HasField("tracing")
