"""What one client has asked for and holds, for one resource type. No I/O, no awaits.

One `Subscription` exists per (stream, type URL). It answers the questions the
server asks before every send: which names does the client want (the wildcard
rules live here), what did we last send it, and what has it accepted. The
stream loop feeds it requests and records what it sent; `plan.py` reads it.

Wildcard rules (xDS protocol, "How the client specifies what resources to
return"): a client whose first request names nothing is a legacy wildcard
subscriber, and stays one while it keeps naming nothing; `*` subscribes to the
wildcard explicitly. Once a client has named anything, an empty list means
"nothing", not "everything".
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..resources import ROUTE, Resource

WILDCARD = "*"


class Decision(enum.Enum):
    """How a request is classified; the stream logs one fixed tag per decision."""

    INITIAL = "INITIAL"  # first request for this type on the stream
    ACK = "ACK"  # echoes the latest nonce, no error
    NACK = "NACK"  # error_detail set: the client rejected a response
    STALE = "STALE"  # echoes an older nonce: SotW name changes are ignored
    SUBSCRIPTION_CHANGE = "SUBSCRIBE"  # the set of names changed


@dataclass(frozen=True, slots=True)
class Nack:
    nonce: str
    version: str  # the version the client keeps running (its last accepted one)
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class InFlight:
    """One response sent and not yet answered."""

    version: str
    full_state: bool
    resources: Mapping[str, Resource]
    removed: frozenset[str]


@dataclass(slots=True)
class Subscription:
    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # Legacy wildcard is allowed until the client names something (including `*`).
    legacy_allowed: bool = True
    # What we last sent, per name: the client's view if it accepts everything.
    # Full-state types share one mapping among sent, in flight and accepted (and, when
    # it is the snapshot's own set, among every stream): copied only before a change.
    sent: Mapping[str, Resource] = field(default_factory=dict)
    # What the client accepted (applied), per name.
    acked: Mapping[str, Resource] = field(default_factory=dict)
    # Responses sent and not yet answered, by nonce.
    inflight: dict[str, InFlight] = field(default_factory=dict)
    # Route tables only: per cluster, how many tables accepted or in flight name it.
    # Counted as tables come and go, so asking costs the same at any size.
    held_refs: Counter[str] = field(default_factory=Counter)
    responded: bool = False
    last_nonce: str | None = None
    acked_version: str = ""
    last_nack: Nack | None = None
    # Delta: subscribed names we told the client do not exist (sent once in removed_resources).
    told_missing: set[str] = field(default_factory=set)
    # Delta: names the client may hold whose fate the next response must settle: sent
    # again if the client still gets them, else listed removed. Unsubscribing a name the
    # wildcard still covers, and holding a name on reconnect that is gone, put them here.
    unsettled: set[str] = field(default_factory=set)
    # Names to evaluate on the next plan even if the snapshot did not change them:
    # names just asked for, route tables held back, clusters kept for old routes,
    # endpoints to resend.
    recheck: set[str] = field(default_factory=set)
    # Bumped when the wildcard starts or ends, or a Delta reconnect says what it holds:
    # the next plan looks at every name. Names asked for one by one go to `recheck`.
    names_epoch: int = 0
    # The snapshot counter and names epoch of this type when it was last planned.
    planned_at: int = -1
    planned_epoch: int = -1
    _sent_shared: bool = False
    _acked_shared: bool = False

    # -- what the client wants --------------------------------------------------------

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def set_names(self, names: Iterable[str]) -> set[str]:
        """SotW: the request's list replaces the subscription. Returns names dropped."""
        requested = set(names)
        if not requested and self.legacy_allowed:
            self._set_wildcard(True)
            return set()
        self.legacy_allowed = False
        wildcard = WILDCARD in requested
        requested.discard(WILDCARD)
        dropped = self.names - requested
        # Only the names just asked for can need sending: the rest were planned already.
        self.recheck |= requested - self.names
        self._set_wildcard(wildcard)
        self.names = requested
        self._forget(dropped)
        return dropped

    def update_names(self, subscribe: Iterable[str], unsubscribe: Iterable[str]) -> None:
        """Delta: the request adds and removes names; honoured whatever the nonce."""
        sub, unsub = set(subscribe), set(unsubscribe)
        if not self.responded and not sub and not unsub and self.legacy_allowed:
            self._set_wildcard(True)
        if sub or unsub:
            self.legacy_allowed = False
        if WILDCARD in sub:
            self._set_wildcard(True)
        if WILDCARD in unsub:
            self._set_wildcard(False)
        sub.discard(WILDCARD)
        unsub.discard(WILDCARD)
        if self.wildcard:
            # Still covered by the wildcard, but the client cannot tell: the protocol has
            # the server send it again (or list it removed) so the client knows to keep it.
            self.unsettled |= unsub & self.names & self.sent.keys()
        else:
            self._forget(unsub)
        self.names |= sub
        self.names -= unsub
        self.told_missing -= sub
        self.recheck |= sub  # to send, or to say once that it does not exist

    def _set_wildcard(self, wildcard: bool) -> None:
        """Starting or ending the wildcard changes which of every name the client gets,
        so the next plan looks at all of them."""
        if wildcard != self.wildcard:
            self.wildcard = wildcard
            self.names_epoch += 1

    def restart(self) -> None:
        """The client may hold nothing: plan and answer as for a first request.

        Not having responded makes the next plan look at every name; the changelog
        alone would find nothing new, and nothing would be sent.
        """
        self.sent = {}
        self.responded = False

    def _own_sent(self) -> dict[str, Resource]:
        if not isinstance(self.sent, dict) or self._sent_shared:
            self.sent, self._sent_shared = dict(self.sent), False
        return self.sent  # type: ignore[return-value]

    def _own_acked(self) -> dict[str, Resource]:
        if not isinstance(self.acked, dict) or self._acked_shared:
            self.acked, self._acked_shared = dict(self.acked), False
        return self.acked  # type: ignore[return-value]

    def _forget(self, names: Iterable[str]) -> None:
        for n in names:
            if n in self.sent:
                self._own_sent().pop(n)
            self._unaccept(n)
            self.told_missing.discard(n)

    def seed_known(self, versions: Mapping[str, str], available: Mapping[str, Resource]) -> None:
        """Delta reconnect: the client already holds these versions; skip what matches.

        What it holds that no longer exists must be listed removed, or it keeps it forever.
        """
        self.names_epoch += 1
        for name, version in versions.items():
            current = available.get(name)
            if current is None:
                self.unsettled.add(name)
            elif current.version == version:
                self._own_sent()[name] = current
                self._set_accepted(name, current)

    # -- what was sent and answered ---------------------------------------------------

    def record_sent(
        self,
        nonce: str,
        resources: Mapping[str, Resource],
        *,
        version: str,
        full_state: bool,
        removed: Iterable[str] = (),
    ) -> None:
        removed = frozenset(removed)
        if full_state:
            self.sent, self._sent_shared = resources, True
        else:
            sent = self._own_sent()
            sent.update(resources)
            for n in removed:
                sent.pop(n, None)
        self.told_missing |= {n for n in removed if n in self.names}
        # The response was planned from this state, so it settled every unsettled name.
        self.unsettled.clear()
        kept = resources if full_state else dict(resources)
        self.inflight[nonce] = InFlight(version, full_state, kept, removed)
        self._count(resources.values(), 1)
        self.last_nonce = nonce
        self.responded = True

    def forget_sent(self, names: Iterable[str]) -> None:
        """Make these names be sent again (EDS after its cluster changed: Envoy won't ask)."""
        for n in names:
            if n in self.sent:
                self._own_sent().pop(n)
            self.recheck.add(n)

    def answer(self, nonce: str, error: str | None) -> Decision | None:
        """Apply an ACK or NACK of `nonce`; None if the nonce is not one we have in flight."""
        if nonce not in self.inflight:
            return None
        for older in [n for n in self.inflight if _seq(n) < _seq(nonce)]:
            # Responses are applied in order, so an older one still in flight was accepted.
            self._accept(self._land(older))
        answered = self._land(nonce)
        if error is not None:
            self.last_nack = Nack(
                nonce=nonce, version=self.acked_version, message=error, at=time.time()
            )
            return Decision.NACK
        self._accept(answered)
        return Decision.ACK

    def _land(self, nonce: str) -> InFlight:
        response = self.inflight.pop(nonce)
        self._count(response.resources.values(), -1)
        return response

    def _accept(self, response: InFlight) -> None:
        # From what was sent, not from the request's version_info: Delta requests carry none.
        self.acked_version = response.version
        if response.full_state and self.type_url != ROUTE:
            # No per-cluster counts to keep for these types: take the response's mapping.
            self.acked, self._acked_shared = response.resources, True
            return
        if response.full_state:
            for n in [n for n in self.acked if n not in response.resources]:
                self._unaccept(n)
        for n, resource in response.resources.items():
            self._set_accepted(n, resource)
        for n in response.removed:
            self._unaccept(n)

    def _set_accepted(self, name: str, resource: Resource) -> None:
        if self.acked.get(name) is resource:
            return
        self._unaccept(name)
        self._own_acked()[name] = resource
        self._count((resource,), 1)

    def _unaccept(self, name: str) -> None:
        old = self._own_acked().pop(name, None) if name in self.acked else None
        if old is not None:
            self._count((old,), -1)

    def _count(self, resources: Iterable[Resource], step: int) -> None:
        if self.type_url != ROUTE:
            return  # only a table's clusters are asked about; full-state sets stay cheap
        refs = self.held_refs
        for resource in resources:
            for ref in resource.refs:
                left = refs[ref] + step
                if left:
                    refs[ref] = left
                else:
                    del refs[ref]  # keep the counter as small as what is held

    def holds_ref(self, name: str) -> bool:
        """Does a resource the client holds or may be applying (accepted or in flight) name it?"""
        return name in self.held_refs


def _seq(nonce: str) -> int:
    try:
        return int(nonce)
    except ValueError:
        return -1
