"""What one client was sent and has acknowledged, for one resource type. No I/O, no awaits.

The stream records each response it sends (`record_sent`) and each answer the
client gives (`answer`); `plan.py` reads what the client holds from here. What
was sent and what was accepted are persistent maps, like the snapshot's: a
client sent the snapshot's whole set holds that very map, and each later change
shares all the rest, so a hundred gateways holding the same 10,000 route tables
cost about one copy of them.

Route tables only: `held_refs` counts, per cluster, how many tables accepted or
in flight name it, so make-before-break asks "is this cluster still named?" at
the same cost at any size. `recounted_refs` counts them from scratch: after a
repeated first request, and in tests that check the kept counts against it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field

from immutables import Map

from ..resources import CLUSTER, ENDPOINT, ROUTE, Resource
from .limits import truncated

EMPTY: Map = Map()


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
class Delivery:
    type_url: str
    # What we last sent, per name: the client's view if it accepts everything.
    sent: Map = EMPTY
    # What the client accepted (applied), per name.
    acked: Map = EMPTY
    # Responses sent and not yet answered, by nonce.
    inflight: dict[str, InFlight] = field(default_factory=dict)
    # Route tables only: per cluster, how many tables accepted or in flight name it.
    held_refs: Map = EMPTY
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
    # Delta clusters and endpoints a reconnecting client holds that are gone: not listed
    # removed until its route tables are known not to name them (make before break
    # across a control-plane restart, whose new process never saw those tables).
    held_gone: set[str] = field(default_factory=set)
    # Delta route tables a reconnecting client holds whose content we do not know (a
    # version we did not make): until each is sent anew or removed, any cluster may be named.
    held_unknown: set[str] = field(default_factory=set)
    # A repeated first request: the route-table counts are rebuilt at the next ACK.
    recount: bool = False

    # -- what the client holds ----------------------------------------------------------

    def holds_ref(self, name: str) -> bool:
        """Does a resource the client holds or may be applying (accepted or in flight) name it?"""
        return name in self.held_refs

    def knows_held(self) -> bool:
        """Delta route tables: is every table the client may hold one we sent (or removed)?"""
        return not self.held_unknown and not self.unsettled

    def recounted_refs(self) -> Map:
        """`held_refs` counted from scratch: what was accepted, then what is in flight."""
        if self.type_url != ROUTE:
            return EMPTY
        counts = _counted(EMPTY, self.acked.values(), 1)
        for pending in self.inflight.values():
            counts = _counted(counts, pending.resources.values(), 1)
        return counts

    # -- what the client's subscription changed -------------------------------------------

    def forget(self, names: Iterable[str]) -> None:
        """Names no longer subscribed: as if never sent, accepted or said to be missing."""
        for n in names:
            self.sent = _without(self.sent, (n,))
            self._unaccept(n)
            self.told_missing.discard(n)

    def unsettle(self, names: Iterable[str]) -> None:
        """Names whose fate the next response must settle, among those sent."""
        self.unsettled.update(n for n in names if n in self.sent)

    def expect(self, names: Collection[str]) -> None:
        """Names asked for anew: if they do not exist, say so again."""
        if names:
            self.told_missing -= names

    def forget_sent(self, names: Iterable[str]) -> None:
        """Make these names be sent again (EDS after its cluster changed: Envoy won't ask)."""
        for n in names:
            self.sent = _without(self.sent, (n,))

    def restart(self) -> None:
        """The client may hold nothing: answer as for a first request.

        What it accepted is forgotten, so a route table waits for its clusters to be
        accepted again. The route tables it may still hold keep their clusters alive
        (`held_refs` is kept) until it accepts what this restart sends; then the
        counts are rebuilt from what it holds by then.
        """
        self.sent = EMPTY
        self.responded = False
        self.acked = EMPTY
        self.recount = self.type_url == ROUTE

    def seed(self, versions: Mapping[str, str], available: Mapping[str, Resource]) -> None:
        """Delta reconnect: the client already holds these versions; skip what matches.

        What it holds that no longer exists must be listed removed, or it keeps it forever.
        """
        keeps_removed = self.type_url in (CLUSTER, ENDPOINT)
        for name, version in versions.items():
            current = available.get(name)
            if current is None:
                (self.held_gone if keeps_removed else self.unsettled).add(name)
            elif current.version == version:
                self.sent = self.sent.set(name, current)
                self._set_accepted(name, current)
            if self.type_url == ROUTE and (current is None or current.version != version):
                self.held_unknown.add(name)

    # -- what was sent and answered -------------------------------------------------------

    def record_sent(
        self,
        nonce: str,
        resources: Mapping[str, Resource],
        *,
        version: str,
        full_state: bool,
        removed: Iterable[str] = (),
        named: Container[str] = frozenset(),
    ) -> None:
        """A response is on its way. `named`: the names the client asked for by name; those
        listed removed are ones it was told do not exist."""
        removed = frozenset(removed)
        resources = _persistent(resources)
        # A full set, or a first response, is taken as it is: when it is the snapshot's
        # own map, this client shares it with the snapshot and every other client.
        sent = resources if full_state or not self.sent else self.sent.update(resources)
        self.sent = _without(sent, removed)
        if self.type_url == ROUTE and not self.held_refs:
            # Nothing held yet: the counts are the response's, shared likewise.
            self.held_refs = _ref_counts(resources)
        else:
            self._count(resources.values(), 1)
        self.told_missing |= {n for n in removed if n in named}
        # The response was planned from this state, so it settled every unsettled name.
        self.unsettled.clear()
        if self.held_gone:
            self.held_gone.difference_update(resources.keys(), removed)
        if self.held_unknown:
            self.held_unknown.difference_update(resources.keys(), removed)
        self.inflight[nonce] = InFlight(version, full_state, resources, removed)
        self.last_nonce = nonce
        self.responded = True

    def answer(self, nonce: str, error: str | None) -> Decision | None:
        """Apply an ACK or NACK of `nonce`; None if the nonce is not one we have in flight."""
        if nonce not in self.inflight:
            return None
        for older in [n for n in self.inflight if _seq(n) < _seq(nonce)]:
            # Responses are applied in order, so an older one still in flight was accepted.
            self._accept(self.inflight.pop(older))
        answered = self.inflight.pop(nonce)
        if error is not None:
            # Nothing was applied: the response's tables are no longer held.
            self._count(answered.resources.values(), -1)
            self.last_nack = Nack(
                nonce=nonce, version=self.acked_version, message=truncated(error), at=time.time()
            )
            return Decision.NACK
        self._accept(answered)
        return Decision.ACK

    def _accept(self, response: InFlight) -> None:
        # From what was sent, not from the request's version_info: Delta requests carry none.
        self.acked_version = response.version
        resources = response.resources
        if self.acked:
            # Counted once in flight, a table now counts as accepted instead: only the
            # accepted version it replaces (or, sent again unchanged, itself) drops out.
            self._count((self.acked[n] for n in resources if n in self.acked), -1)
        if response.full_state:
            self._count((r for n, r in self.acked.items() if n not in resources), -1)
            self.acked = resources
        else:
            self.acked = resources if not self.acked else self.acked.update(resources)
        for n in response.removed:
            self._unaccept(n)
        if self.recount:
            # After a repeated first request: what it holds now is what it accepted since,
            # plus what is still in flight; the tables it held before are gone or replaced.
            self.recount = False
            self.held_refs = self.recounted_refs()

    def _set_accepted(self, name: str, resource: Resource) -> None:
        if self.acked.get(name) is resource:
            return
        self._unaccept(name)
        self.acked = self.acked.set(name, resource)
        self._count((resource,), 1)

    def _unaccept(self, name: str) -> None:
        old = self.acked.get(name)
        if old is not None:
            self.acked = self.acked.delete(name)
            self._count((old,), -1)

    def _count(self, resources: Iterable[Resource], step: int) -> None:
        if self.type_url == ROUTE:  # only a table's clusters are asked about
            self.held_refs = _counted(self.held_refs, resources, step)


def _persistent(resources: Mapping[str, Resource]) -> Map:
    return resources if isinstance(resources, Map) else Map(resources)


def _without(resources: Map, names: Collection[str]) -> Map:
    if not names:
        return resources
    with resources.mutate() as out:
        for n in names:
            out.pop(n, None)
        return out.finish()


def _counted(counts: Map, resources: Iterable[Resource], step: int) -> Map:
    """`counts` with each resource's references counted `step` more (kept at zero: dropped)."""
    with counts.mutate() as out:
        for resource in resources:
            for ref in resource.refs:
                left = out.get(ref, 0) + step
                if left:
                    out[ref] = left
                else:
                    del out[ref]
        return out.finish()


_REF_COUNTS: dict[int, tuple[Map, Map]] = {}


def _ref_counts(tables: Map) -> Map:
    """How many of `tables` name each cluster.

    Remembered for the few latest maps it was asked about, by identity: every
    client sent the same snapshot's tables shares one result.
    """
    hit = _REF_COUNTS.get(id(tables))
    if hit is not None and hit[0] is tables:
        return hit[1]
    counts = _counted(EMPTY, tables.values(), 1)
    if len(_REF_COUNTS) >= 4:
        _REF_COUNTS.clear()
    _REF_COUNTS[id(tables)] = (tables, counts)
    return counts


def _seq(nonce: str) -> int:
    try:
        return int(nonce)
    except ValueError:
        return -1
