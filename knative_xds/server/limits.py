"""Caps a client cannot exceed, in one place: what one stream or one peer may make us hold.

Each figure is far above what a real gateway fleet needs, and far below what
would let one client make the server hold gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names one subscription may ask for. A fleet of 10,000 Routes asks for 20,000 route
# tables (one per listener); 100,000 is five times that, about 10 MB of names at most.
MAX_NAMES = 100_000

# Bytes of one request. 10,000 names of about 40 bytes encode to some 400 KB; 4 MiB
# leaves room for MAX_NAMES such names while a request of 16 MB (gRPC's default cap
# here before) would decode into a hundred megabytes of Python objects.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

# Open ADS streams from one IP address. An Envoy holds one (two during a hot restart);
# 64 leaves room for many gateways behind one NAT, not for a flood from one host.
MAX_STREAMS_PER_PEER = 64

# Characters of a NACK's error text kept in logs, status and the NACK log. Envoy's
# messages name the resource and field in the first few hundred; a client can send 64 KB.
MAX_NACK_TEXT = 1024

# Seconds one send may stay blocked (the client stopped reading) before the stream is
# cut: the client is stuck, and its stream holds a response in memory until then.
SEND_DEADLINE = 60.0


def truncated(text: str, limit: int = MAX_NACK_TEXT) -> str:
    """`text` cut to `limit` characters, saying how much was left off."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps one server applies; the defaults above unless a test needs them small."""

    max_names: int = MAX_NAMES
    max_streams_per_peer: int = MAX_STREAMS_PER_PEER
    send_deadline: float = SEND_DEADLINE


DEFAULT_LIMITS = Limits()
