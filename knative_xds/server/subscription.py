"""One client's state for one resource type: three small parts, composed. No I/O, no awaits.

One `Subscription` exists per (stream, type URL), made of:

- `interest` (`interest.py`): what the client asked for, and the wildcard rules;
- `delivery` (`delivery.py`): what it was sent, has in flight and has accepted or
  rejected, and which clusters its route tables name;
- `cursor` (`cursor.py`): where planning stands, i.e. what the next plan looks at.

A request changes the interest, and what that means for the other two is applied
here, in one place. The stream loop feeds it requests and records what it sent;
`plan.py`, CSDS, the status view and metrics only read it, through the
properties below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from immutables import Map

from ..resources import Resource
from .cursor import PlanCursor
from .delivery import EMPTY, Decision, Delivery, InFlight, Nack
from .interest import (
    WILDCARD,
    Interest,
    NameChange,
    interned_name_sets,
    release_names,
    release_unused_names,
)

__all__ = [
    "EMPTY",
    "WILDCARD",
    "Decision",
    "InFlight",
    "Nack",
    "Subscription",
    "interned_name_sets",
    "release_names",
    "release_unused_names",
]


class Subscription:
    __slots__ = ("__weakref__", "cursor", "delivery", "interest", "type_url")

    def __init__(self, type_url: str, *, wildcard: bool = False) -> None:
        self.type_url = type_url
        self.interest = Interest(wildcard=wildcard)
        self.delivery = Delivery(type_url)
        self.cursor = PlanCursor()

    def __repr__(self) -> str:
        return f"Subscription({self.type_url!r}, {self.interest}, {len(self.sent)} sent)"

    # -- requests -------------------------------------------------------------------------

    def set_names(self, names: Iterable[str]) -> set[str]:
        """SotW: the request's list replaces the subscription. Returns names dropped."""
        self.interest, change = self.interest.sotw(names)
        self._apply(change)
        return set(change.dropped)

    def update_names(self, subscribe: Iterable[str], unsubscribe: Iterable[str]) -> None:
        """Delta: the request adds and removes names; honoured whatever the nonce."""
        first = not self.delivery.responded
        self.interest, change = self.interest.delta(subscribe, unsubscribe, first=first)
        self._apply(change)

    def _apply(self, change: NameChange) -> None:
        if change.wildcard_changed:
            self.cursor.look_at_everything()
        self.delivery.unsettle(change.covered)
        self.delivery.forget(change.dropped)
        self.delivery.expect(change.added)
        self.cursor.look_at(change.added)  # to send, or to say once that it does not exist

    def restart(self) -> None:
        """The client may hold nothing: plan and answer as for a first request.

        Not having responded makes the next plan look at every name; the changelog
        alone would find nothing new, and nothing would be sent.
        """
        self.delivery.restart()

    def seed_known(self, versions: Mapping[str, str], available: Mapping[str, Resource]) -> None:
        """Delta reconnect: the client already holds these versions; skip what matches."""
        self.cursor.look_at_everything()
        self.delivery.seed(versions, available)

    # -- responses and answers --------------------------------------------------------------

    def record_sent(
        self,
        nonce: str,
        resources: Mapping[str, Resource],
        *,
        version: str,
        full_state: bool,
        removed: Iterable[str] = (),
    ) -> None:
        self.delivery.record_sent(
            nonce,
            resources,
            version=version,
            full_state=full_state,
            removed=removed,
            named=self.interest.names,
        )

    def forget_sent(self, names: Iterable[str]) -> None:
        """Make these names be sent again (EDS after its cluster changed: Envoy won't ask)."""
        names = tuple(names)
        self.delivery.forget_sent(names)
        self.cursor.look_at(names)

    def answer(self, nonce: str, error: str | None) -> Decision | None:
        """Apply an ACK or NACK of `nonce`; None if the nonce is not one we have in flight."""
        return self.delivery.answer(nonce, error)

    def changes_since(self) -> int | None:
        """The snapshot counter after which only changed names need planning; None: all."""
        return self.cursor.since() if self.delivery.responded else None

    # -- read by plan.py and observers ----------------------------------------------------

    def covers(self, name: str) -> bool:
        return self.interest.covers(name)

    def holds_ref(self, name: str) -> bool:
        return self.delivery.holds_ref(name)

    def knows_held(self) -> bool:
        return self.delivery.knows_held()

    @property
    def wildcard(self) -> bool:
        return self.interest.wildcard

    @property
    def names(self) -> frozenset[str]:
        return self.interest.names

    @property
    def legacy_allowed(self) -> bool:
        return self.interest.legacy_allowed

    @property
    def sent(self) -> Map:
        return self.delivery.sent

    @property
    def acked(self) -> Map:
        return self.delivery.acked

    @property
    def inflight(self) -> Mapping[str, InFlight]:
        return self.delivery.inflight

    @property
    def responded(self) -> bool:
        return self.delivery.responded

    @property
    def last_nonce(self) -> str | None:
        return self.delivery.last_nonce

    @property
    def acked_version(self) -> str:
        return self.delivery.acked_version

    @property
    def last_nack(self) -> Nack | None:
        return self.delivery.last_nack

    @property
    def told_missing(self) -> set[str]:
        return self.delivery.told_missing

    @property
    def unsettled(self) -> set[str]:
        return self.delivery.unsettled

    @property
    def held_gone(self) -> set[str]:
        return self.delivery.held_gone

    @property
    def recheck(self) -> set[str]:
        return self.cursor.recheck

    @property
    def planned_at(self) -> int:
        return self.cursor.planned_at
