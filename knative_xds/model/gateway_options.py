"""The gateway's settings: ConfigMap `config-xds` in `knative-serving`, read into `GatewayOptions`.

Keys are Kourier's (`config-kourier`) where the meaning is the same, so that a
user can copy their data across; `service-access-log-format`, `min-tls-version`
and `trusted-hops` are ours. Every value is checked here, when the ConfigMap is
read, against what Envoy would take: a bad one is an error on its key (the
resolver keeps the last good options serving), never a listener Envoy rejects.
Keys this module does not know are left unread, as Knative leaves unknown keys
of its ConfigMaps. The `extauthz-*` keys are read only when `extauthz-host` is
set, and the `tracing-*` keys only when `tracing-endpoint` is, as Kourier reads them.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping

from .objects import ObjectError, RawObject, dns_subdomain_error, string_map
from .types import (
    AccessLogFormat,
    ExtAuthz,
    ExtAuthzProtocol,
    GatewayOptions,
    Tracing,
    TracingProtocol,
)

# Kourier's boolean keys are read with Go's strconv.ParseBool: these spellings.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")

# The cipher names BoringSSL (Envoy's TLS library) knows for TLS 1.0-1.2; TLS 1.3's
# suites are fixed by BoringSSL and cannot be chosen. Envoy refuses a listener that
# names any other, so a typo is caught here, on its key.
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-PSK-AES128-CBC-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "ECDHE-PSK-AES256-CBC-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
        "PSK-AES128-CBC-SHA",
        "PSK-AES256-CBC-SHA",
        "DES-CBC3-SHA",
    }
)

# Envoy's access log commands (its substitution formatter; a test has Envoy validate each).
# Envoy refuses a listener whose log format names another.
FORMAT_COMMANDS = frozenset(
    """
    START_TIME EMIT_TIME REQUEST_HEADERS_BYTES BYTES_RECEIVED
    BYTES_SENT UPSTREAM_HEADER_BYTES_SENT UPSTREAM_HEADER_BYTES_RECEIVED
    DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_HEADER_BYTES_RECEIVED UPSTREAM_WIRE_BYTES_SENT
    UPSTREAM_WIRE_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_SENT DOWNSTREAM_WIRE_BYTES_RECEIVED
    RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES PROTOCOL UPSTREAM_PROTOCOL RESPONSE_CODE
    RESPONSE_CODE_DETAILS CONNECTION_TERMINATION_DETAILS RESPONSE_FLAGS RESPONSE_FLAGS_LONG
    DURATION REQUEST_DURATION REQUEST_TX_DURATION RESPONSE_DURATION RESPONSE_TX_DURATION
    DOWNSTREAM_HANDSHAKE_DURATION ROUNDTRIP_DURATION COMMON_DURATION UPSTREAM_HOST
    UPSTREAM_HOST_NAME UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_CLUSTER UPSTREAM_CLUSTER_RAW
    UPSTREAM_LOCAL_ADDRESS UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT UPSTREAM_LOCAL_PORT
    UPSTREAM_REMOTE_ADDRESS UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT UPSTREAM_REMOTE_PORT
    UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_TRANSPORT_FAILURE_REASON UPSTREAM_CONNECTION_ID
    UPSTREAM_TLS_CIPHER UPSTREAM_TLS_VERSION UPSTREAM_TLS_SESSION_ID UPSTREAM_PEER_ISSUER
    UPSTREAM_PEER_CERT UPSTREAM_PEER_SUBJECT UPSTREAM_PEER_URI_SAN UPSTREAM_LOCAL_URI_SAN
    UPSTREAM_PEER_CERT_V_START UPSTREAM_PEER_CERT_V_END
    UPSTREAM_FILTER_STATE UPSTREAM_METADATA HOSTNAME DOWNSTREAM_LOCAL_ADDRESS
    DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_LOCAL_PORT DOWNSTREAM_REMOTE_ADDRESS
    DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_REMOTE_PORT
    DOWNSTREAM_DIRECT_REMOTE_ADDRESS DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT
    DOWNSTREAM_DIRECT_REMOTE_PORT DOWNSTREAM_DIRECT_LOCAL_ADDRESS
    DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_LOCAL_PORT
    DOWNSTREAM_LOCAL_DNS_SAN DOWNSTREAM_PEER_DNS_SAN DOWNSTREAM_LOCAL_IP_SAN
    DOWNSTREAM_PEER_IP_SAN DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_LOCAL_URI_SAN
    DOWNSTREAM_PEER_SUBJECT DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_TLS_SESSION_ID
    DOWNSTREAM_TLS_CIPHER DOWNSTREAM_TLS_VERSION DOWNSTREAM_PEER_FINGERPRINT_256
    DOWNSTREAM_PEER_FINGERPRINT_1 DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_ISSUER
    DOWNSTREAM_PEER_CERT DOWNSTREAM_PEER_CERT_V_START DOWNSTREAM_PEER_CERT_V_END
    DOWNSTREAM_TRANSPORT_FAILURE_REASON CONNECTION_ID REQUESTED_SERVER_NAME ROUTE_NAME
    VIRTUAL_CLUSTER_NAME REQ RESP TRAILER DYNAMIC_METADATA CLUSTER_METADATA
    FILTER_STATE FILTER_CHAIN_NAME STREAM_ID UNIQUE_ID LOCAL_REPLY_BODY ACCESS_LOG_TYPE
    ENVIRONMENT GRPC_STATUS GRPC_STATUS_NUMBER TRACE_ID UPSTREAM_LOCAL_CLOSE_REASON
    DOWNSTREAM_LOCAL_CLOSE_REASON UPSTREAM_DETECTED_CLOSE_TYPE DOWNSTREAM_DETECTED_CLOSE_TYPE
    REQUEST_HEADER RESPONSE_HEADER RESPONSE_TRAILER QUERY_PARAM PATH CUSTOM_FLAGS
    """.split()  # noqa: SIM905 (a word list reads better than 130 quoted strings)
)
_COMMAND = re.compile(r"%([A-Z][A-Z0-9_]*)(\([^)%]*\))?(:[0-9]+)?%")

# With `service-access-log-format: json` and no template: one object per request.
DEFAULT_JSON_FIELDS: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
)

# Go's time.ParseDuration, which Kourier reads `stream-idle-timeout` with.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Envoy's durations end at about 292 years; a day is more than any idle stream needs.
MAX_IDLE_SECONDS = 7 * 24 * 3600
MAX_TRUSTED_HOPS = 64


def _bool(key: str, value: str) -> bool:
    text = value.strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ObjectError(f"data.{key}", f"{value[:50]!r} is not a boolean; use 'true' or 'false'")


def check_template(key: str, template: str) -> str:
    """An Envoy access log format string, its commands known (`%REQ(:PATH)%`, `%DURATION%`)."""
    for m in _COMMAND.finditer(template):
        if m.group(1) not in FORMAT_COMMANDS:
            raise ObjectError(f"data.{key}", f"unknown access log command %{m.group(1)}%")
    if "%" in _COMMAND.sub("", template):
        raise ObjectError(
            f"data.{key}",
            f"{template[:100]!r}: a '%' that opens no command; commands look like"
            " %START_TIME% or %REQ(:PATH)%",
        )
    return template


def _json_fields(key: str, template: str) -> tuple[tuple[str, str], ...]:
    try:
        fields = json.loads(template)
    except ValueError as e:
        raise ObjectError(
            f"data.{key}", f"with service-access-log-format json, must be a JSON object: {e}"
        ) from None
    if not isinstance(fields, dict) or not fields:
        raise ObjectError(
            f"data.{key}",
            "with service-access-log-format json, must be a JSON object of field names to"
            ' format strings, like {"path": "%REQ(:PATH)%"}',
        )
    out = []
    for name, value in fields.items():
        if not isinstance(value, str):
            raise ObjectError(f"data.{key}", f"field {name!r}: its value must be a string")
        out.append((name, check_template(key, value)))
    return tuple(sorted(out))


def _ciphers(key: str, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if name not in CIPHER_SUITES:
            raise ObjectError(
                f"data.{key}",
                f"unknown cipher suite {name[:60]!r} (BoringSSL's names, such as"
                " ECDHE-RSA-AES128-GCM-SHA256; TLS 1.3 suites cannot be chosen)",
            )
    return tuple(dict.fromkeys(names))


def _tls_version(key: str, value: str) -> str:
    text = value.strip().removeprefix("TLSv").replace("_", ".")
    if text not in TLS_VERSIONS:
        raise ObjectError(f"data.{key}", f"{value[:30]!r}: use one of {', '.join(TLS_VERSIONS)}")
    return text


def parse_duration(key: str, value: str) -> float:
    """Seconds from a Go duration (`300s`, `5m`, `1h30m`, `0`), as Kourier reads them."""
    text = value.strip()
    if text == "0":
        return 0.0
    pos, seconds = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ObjectError(
                f"data.{key}", f"{value[:30]!r} is not a duration; use e.g. '300s', '5m' or '0'"
            )
        seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not text:
        raise ObjectError(f"data.{key}", "is empty; use e.g. '300s', '5m' or '0'")
    if seconds > MAX_IDLE_SECONDS:
        raise ObjectError(f"data.{key}", f"{value[:30]!r} is over 7 days")
    return seconds


def _trusted_hops(key: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) > MAX_TRUSTED_HOPS:
        raise ObjectError(
            f"data.{key}", f"{value[:30]!r}: must be a whole number from 0 to {MAX_TRUSTED_HOPS}"
        )
    return int(text)


def _secret_name(key: str, value: str) -> str:
    if not value.strip():
        return ""  # Kourier's default, "": no internal TLS
    why = dns_subdomain_error(value.strip())
    if why is not None:
        raise ObjectError(f"data.{key}", f"is not a Secret name: {why}")
    return value.strip()


def _format(key: str, value: str) -> AccessLogFormat:
    try:
        return AccessLogFormat(value.strip().lower())
    except ValueError:
        raise ObjectError(f"data.{key}", f"{value[:30]!r}: use 'text' or 'json'") from None


# Key → (GatewayOptions field, reader). The template is read with the format (below).
_READERS: Mapping[str, tuple[str, Callable[[str, str], object]]] = {
    "enable-service-access-logging": ("access_log", _bool),
    "service-access-log-format": ("access_log_format", _format),
    "enable-proxy-protocol": ("proxy_protocol", _bool),
    "cipher-suites": ("cipher_suites", _ciphers),
    "min-tls-version": ("min_tls_version", _tls_version),
    "stream-idle-timeout": ("stream_idle_timeout", parse_duration),
    "trusted-hops": ("trusted_hops", _trusted_hops),
    "cluster-cert-secret": ("cluster_cert_secret", _secret_name),
}
TEMPLATE_KEY = "service-access-log-template"
EXTAUTHZ_HOST = "extauthz-host"
EXTAUTHZ_KEYS = (
    EXTAUTHZ_HOST,
    "extauthz-protocol",
    "extauthz-failure-mode-allow",
    "extauthz-max-request-body-bytes",
    "extauthz-timeout",
    "extauthz-path-prefix",
)
TRACING_ENDPOINT = "tracing-endpoint"
TRACING_KEYS = (
    TRACING_ENDPOINT,
    "tracing-protocol",
    "tracing-sampling-rate",
    "tracing-service-name",
)
KEYS = (*_READERS, TEMPLATE_KEY, *EXTAUTHZ_KEYS, *TRACING_KEYS)
# Envoy's timeouts end near 292 years; an authorizer that takes a day is not answering.
MAX_EXTAUTHZ_TIMEOUT_MS = 24 * 3600 * 1000
_UINT32 = (1 << 32) - 1
_HEADER_UNSAFE = re.compile(r"[\x00-\x20\x7f?#]")


def _host_port(key: str, value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, as Go's net.SplitHostPort (Kourier's reader) splits it."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs its brackets, as in Go
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ObjectError(
            f"data.{key}", f"{value[:60]!r}: use host:port, like my-auth.auth:9000 (port 1-65535)"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if (why := dns_subdomain_error(host.removesuffix("."))) is not None:
            raise ObjectError(f"data.{key}", f"{host[:60]!r} is not a host name: {why}") from None
    return host, int(port)


def _whole(key: str, value: str, low: int, high: int, unit: str = "") -> int:
    text = value.strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ObjectError(
            f"data.{key}", f"{value[:30]!r}: must be a whole number from {low} to {high}{unit}"
        )
    return int(text)


def _protocol(key: str, value: str) -> ExtAuthzProtocol:
    try:
        return ExtAuthzProtocol(value.strip().lower())
    except ValueError:
        raise ObjectError(f"data.{key}", f"{value[:30]!r}: use grpc, http or https") from None


def _path_prefix(key: str, value: str) -> str:
    text = value.strip()
    if text and (not text.startswith("/") or _HEADER_UNSAFE.search(text)):
        raise ObjectError(
            f"data.{key}",
            f"{value[:60]!r}: must be a path starting with '/', with no spaces, '?' or '#'",
        )
    return text


def parse_ext_authz(data: Mapping[str, str]) -> ExtAuthz | None:
    """The authorizer, or None when `extauthz-host` is unset or empty (Kourier's switch:
    then the other `extauthz-*` keys are not read). An empty or absent protocol is gRPC."""
    if not data.get(EXTAUTHZ_HOST, "").strip():
        return None
    host, port = _host_port(EXTAUTHZ_HOST, data[EXTAUTHZ_HOST])
    values: dict[str, object] = {}
    if text := data.get("extauthz-protocol", "").strip():
        values["protocol"] = _protocol("extauthz-protocol", text)
    if "extauthz-failure-mode-allow" in data:
        values["failure_mode_allow"] = _bool(
            "extauthz-failure-mode-allow", data["extauthz-failure-mode-allow"]
        )
    if "extauthz-max-request-body-bytes" in data:
        # Envoy refuses 0 (its BufferSettings wants more than none).
        key = "extauthz-max-request-body-bytes"
        values["max_request_bytes"] = _whole(key, data[key], 1, _UINT32, " bytes")
    if "extauthz-timeout" in data:
        key = "extauthz-timeout"
        values["timeout_ms"] = _whole(key, data[key], 0, MAX_EXTAUTHZ_TIMEOUT_MS, " (ms)")
    if "extauthz-path-prefix" in data:
        values["path_prefix"] = _path_prefix("extauthz-path-prefix", data["extauthz-path-prefix"])
    return ExtAuthz(host=host, port=port, **values)  # type: ignore[arg-type]


# Kourier's `tracing-protocol` values are knative.dev/pkg's: `grpc` and `http/protobuf`.
_TRACING_PROTOCOLS = {
    "grpc": TracingProtocol.GRPC,
    "http/protobuf": TracingProtocol.HTTP,
    "http": TracingProtocol.HTTP,
}


def _collector(key: str, value: str) -> tuple[str, int, str]:
    """Host, port and path of Kourier's URL form (`http://otel.observability:4317`,
    `http://otel:4318/v1/traces`) or of a bare `host:port`."""
    text = value.strip()
    if "://" not in text:
        return (*_host_port(key, text), "")
    url = urllib.parse.urlsplit(text)
    if url.scheme != "http":
        raise ObjectError(
            f"data.{key}",
            f"{value[:60]!r}: use http://host:port[/path] or host:port (TLS to the collector"
            " is not supported)",
        )
    host, port = _host_port(key, url.netloc)
    if url.query or url.fragment or _HEADER_UNSAFE.search(url.path):
        raise ObjectError(f"data.{key}", f"{value[:60]!r}: the path takes no query or spaces")
    return host, port, url.path


def _sampling_rate(key: str, value: str) -> float:
    try:
        rate = float(value.strip())
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:  # NaN fails too
        raise ObjectError(f"data.{key}", f"{value[:30]!r}: must be a number from 0.0 to 1.0")
    return rate


def parse_tracing(data: Mapping[str, str]) -> Tracing | None:
    """The collector, or None when `tracing-endpoint` is unset or empty (Kourier's switch:
    the other `tracing-*` keys are then not read); an empty key takes Kourier's default."""
    if not data.get(TRACING_ENDPOINT, "").strip():
        return None
    host, port, path = _collector(TRACING_ENDPOINT, data[TRACING_ENDPOINT])
    values: dict[str, object] = {}
    if text := data.get("tracing-protocol", "").strip():
        if text.lower() not in _TRACING_PROTOCOLS:
            raise ObjectError(
                "data.tracing-protocol", f"{text[:30]!r}: use grpc or http/protobuf (or http)"
            )
        values["protocol"] = _TRACING_PROTOCOLS[text.lower()]
    if path and path != "/":
        values["path"] = path
    if text := data.get("tracing-sampling-rate", "").strip():
        values["sampling_rate"] = _sampling_rate("tracing-sampling-rate", text)
    if text := data.get("tracing-service-name", "").strip():
        values["service_name"] = text
    return Tracing(host=host, port=port, **values)  # type: ignore[arg-type]


def parse_config_xds(raw: RawObject) -> GatewayOptions:
    """`config-xds`'s data as GatewayOptions; ObjectError naming the first bad key."""
    data = string_map(raw.body, "data")
    values: dict[str, object] = {}
    for key, (name, read) in _READERS.items():
        if key in data:
            values[name] = read(key, data[key])
    template = data.get(TEMPLATE_KEY, "")
    if values.get("access_log_format") is AccessLogFormat.JSON:
        values["access_log_json"] = (
            _json_fields(TEMPLATE_KEY, template) if template.strip() else DEFAULT_JSON_FIELDS
        )
    elif template:
        values["access_log_template"] = check_template(TEMPLATE_KEY, template)
    values["ext_authz"] = parse_ext_authz(data)
    values["tracing"] = parse_tracing(data)
    return GatewayOptions(**values)  # type: ignore[arg-type]
