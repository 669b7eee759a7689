"""Small helpers every translator module needs to build Envoy's messages."""

from __future__ import annotations

import ipaddress

from google.protobuf import any_pb2


def pack(message) -> any_pb2.Any:
    """`message` in an Any, as Envoy's typed_config fields take it."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def is_ip(host: str) -> bool:
    """An address, not a DNS name: a cluster for it is STATIC, not STRICT_DNS."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
