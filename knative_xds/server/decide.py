"""Classify a request before anything changes: a pure function, in the protocol's order.

SotW (xDS protocol, "ACK and NACK semantics"): a request carrying error_detail
is a NACK of the response whose nonce it echoes; one echoing an older nonce is
stale, and its name list is ignored (the client repeats it on its next
request); otherwise it is an ACK, which may also change the names.
Delta: name changes are honoured whatever the nonce; the nonce only says
which response is being acknowledged or rejected.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from .subscription import WILDCARD, Decision, Subscription


def classify_sotw(request: discovery_pb2.DiscoveryRequest, sub: Subscription | None) -> Decision:
    if sub is None or not request.response_nonce:
        return Decision.INITIAL
    # A nonce echoed before this stream sent anything of the type comes from an earlier
    # stream: nothing newer was sent, so it is not stale and its names count.
    stale = sub.last_nonce is not None and request.response_nonce != sub.last_nonce
    if request.HasField("error_detail"):
        return Decision.STALE if stale else Decision.NACK
    if stale:
        return Decision.STALE
    if _names(request.resource_names, sub) != _current(sub):
        return Decision.SUBSCRIPTION_CHANGE
    return Decision.ACK


def classify_delta(
    request: discovery_pb2.DeltaDiscoveryRequest, sub: Subscription | None
) -> Decision:
    if sub is None:
        return Decision.INITIAL
    if request.resource_names_subscribe or request.resource_names_unsubscribe:
        return Decision.SUBSCRIPTION_CHANGE
    if request.HasField("error_detail"):
        return Decision.NACK
    if request.response_nonce and request.response_nonce != sub.last_nonce:
        return Decision.STALE
    return Decision.ACK


def _names(names, sub: Subscription) -> frozenset[str]:
    requested = frozenset(names)
    if not requested and sub.legacy_allowed:
        return frozenset({WILDCARD})
    return requested


def _current(sub: Subscription) -> frozenset[str]:
    return frozenset(sub.names | ({WILDCARD} if sub.wildcard else set()))
