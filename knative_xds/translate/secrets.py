"""TLS Secret → SDS Secret, named for the Kubernetes Secret.

The HTTPS listener's filter chains name their certificate by SDS, on the same
ADS stream, so a certificate rotation re-sends one secret and no listener.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from ..model import Certificate
from ..resources import Resource
from .names import secret_name


def secret_resource(certificate: Certificate) -> Resource:
    name = secret_name(certificate.key)
    msg = secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate.chain),
            private_key=base_pb2.DataSource(inline_bytes=certificate.private_key),
        ),
    )
    return Resource.of(msg, name=name)
