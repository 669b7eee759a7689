"""What `config-xds` adds to the listeners: access logs, PROXY protocol, the TLS policy.

Each builder takes the already-validated `GatewayOptions` (model/gateway_options.py)
and returns the Envoy message, or nothing when the option is off, so that a gateway
with no `config-xds` gets byte-for-byte the listeners it had before it existed.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2
from google.protobuf import struct_pb2

from ..model import AccessLogFormat, GatewayOptions
from .protos import pack

STDOUT_LOGGER = "envoy.access_loggers.stdout"
PROXY_PROTOCOL = "envoy.filters.listener.proxy_protocol"

_TLS_VERSIONS = {
    "1.0": common_pb2.TlsParameters.TLSv1_0,
    "1.1": common_pb2.TlsParameters.TLSv1_1,
    "1.2": common_pb2.TlsParameters.TLSv1_2,
    "1.3": common_pb2.TlsParameters.TLSv1_3,
}


def _log_format(options: GatewayOptions) -> substitution_format_string_pb2.SubstitutionFormatString:
    if options.access_log_format is AccessLogFormat.JSON:
        fields = struct_pb2.Struct()
        fields.update(dict(options.access_log_json))
        return substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    # A ConfigMap value seldom ends in a newline, and Envoy writes the line as given.
    line = options.access_log_template
    line = line if line.endswith("\n") else line + "\n"
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=line)
    )


def access_logs(options: GatewayOptions) -> list[accesslog_pb2.AccessLog]:
    """The connection manager's access log: a line per request on Envoy's stdout, in
    Envoy's default format, the template, or JSON; none when logging is off."""
    if not options.access_log:
        return []
    if options.access_log_format is AccessLogFormat.TEXT and not options.access_log_template:
        logger = stream_pb2.StdoutAccessLog()  # no format: Envoy's default line
    else:
        logger = stream_pb2.StdoutAccessLog(log_format=_log_format(options))
    return [accesslog_pb2.AccessLog(name=STDOUT_LOGGER, typed_config=pack(logger))]


def proxy_protocol_filters(options: GatewayOptions) -> list[listener_components_pb2.ListenerFilter]:
    """The PROXY protocol listener filter (v1 and v2) for an external listener, first of
    its filters: the balancer's header gives the connection its client's address, so
    `use_remote_address` puts that address in X-Forwarded-For. A connection without
    the header is closed: behind a balancer that sends it, one that does not is not
    coming through the balancer."""
    if not options.proxy_protocol:
        return []
    return [
        listener_components_pb2.ListenerFilter(
            name=PROXY_PROTOCOL,
            typed_config=pack(proxy_protocol_pb2.ProxyProtocol(stat_prefix="proxy_protocol")),
        )
    ]


def tls_parameters(options: GatewayOptions) -> common_pb2.TlsParameters | None:
    """The HTTPS listeners' cipher suites and minimum version; None leaves Envoy's own."""
    if not options.cipher_suites and not options.min_tls_version:
        return None
    params = common_pb2.TlsParameters(cipher_suites=list(options.cipher_suites))
    if options.min_tls_version:
        params.tls_minimum_protocol_version = _TLS_VERSIONS[options.min_tls_version]
        if options.min_tls_version == "1.3":
            # Envoy's default maximum for a server is 1.3; say it so min <= max holds.
            params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    return params
