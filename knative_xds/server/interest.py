"""What one client asked for, for one resource type: a value, and pure transitions.

Wildcard rules (xDS protocol, "How the client specifies what resources to
return"): a client whose first request names nothing is a legacy wildcard
subscriber, and stays one while it keeps naming nothing; `*` subscribes to the
wildcard explicitly. Once a client has named anything, an empty list means
"nothing", not "everything".

A request gives a new `Interest` and a `NameChange` saying what the change means
for what was sent (`delivery.py`) and for what the next plan looks at (`cursor.py`);
`subscription.py` applies it to both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class NameChange:
    """What one request changed in a subscription, for the parts that depend on it."""

    # Names to look at in the next plan: to send, or to say once that they do not exist.
    added: frozenset[str] = frozenset()
    # Names no longer wanted: what was sent and accepted under them is forgotten.
    dropped: frozenset[str] = frozenset()
    # Delta: names unsubscribed that the wildcard still covers; the client cannot tell,
    # so the next response sends each again (or lists it removed).
    covered: frozenset[str] = frozenset()
    # The wildcard started or ended (even if only for a moment): which of every name the
    # client gets changed, so the next plan looks at all of them.
    wildcard_changed: bool = False


@dataclass(frozen=True, slots=True)
class Interest:
    wildcard: bool = False
    # Interned: Envoys of one gateway fleet ask for the same thousands of names.
    names: frozenset[str] = frozenset()
    # Legacy wildcard is allowed until the client names something (including `*`).
    legacy_allowed: bool = True

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def sotw(self, names: Iterable[str]) -> tuple[Interest, NameChange]:
        """SotW: the request's list replaces the subscription."""
        requested = set(names)
        if not requested and self.legacy_allowed:
            return replace(self, wildcard=True), NameChange(wildcard_changed=not self.wildcard)
        wildcard = WILDCARD in requested
        requested.discard(WILDCARD)
        wanted = frozenset(requested)
        change = NameChange(
            # Only the names just asked for can need sending: the rest were planned already.
            added=wanted - self.names,
            dropped=self.names - wanted,
            wildcard_changed=wildcard != self.wildcard,
        )
        return Interest(wildcard, _interned(wanted), legacy_allowed=False), change

    def delta(
        self, subscribe: Iterable[str], unsubscribe: Iterable[str], *, first: bool
    ) -> tuple[Interest, NameChange]:
        """Delta: the request adds and removes names; honoured whatever the nonce.

        `first`: nothing of this type was sent on the stream yet, so an empty request
        can still be a legacy wildcard one.
        """
        sub, unsub = set(subscribe), set(unsubscribe)
        named = bool(sub or unsub)
        turns = []  # the wildcard's states, in the order the rules apply them
        if first and not named and self.legacy_allowed:
            turns.append(True)
        if WILDCARD in sub:
            turns.append(True)
        if WILDCARD in unsub:
            turns.append(False)
        wildcard, toggled = self.wildcard, False
        for on in turns:
            toggled |= on != wildcard
            wildcard = on
        sub.discard(WILDCARD)
        unsub.discard(WILDCARD)
        subscribed, unsubscribed = frozenset(sub), frozenset(unsub)
        names = _interned((self.names | subscribed) - unsubscribed) if named else self.names
        after = Interest(wildcard, names, legacy_allowed=self.legacy_allowed and not named)
        if wildcard:
            # Still covered by the wildcard, but the client cannot tell: the protocol has
            # the server send it again (or list it removed) so the client knows to keep it.
            change = NameChange(
                added=subscribed, covered=unsubscribed & self.names, wildcard_changed=toggled
            )
        else:
            change = NameChange(added=subscribed, dropped=unsubscribed, wildcard_changed=toggled)
        return after, change


# -- one shared copy of each large name set ---------------------------------------------

_NAME_SETS: dict[frozenset[str], frozenset[str]] = {}


def _interned(names: frozenset[str]) -> frozenset[str]:
    """One shared copy of each name set in use: a hundred Envoys subscribed to the same
    10,000 route tables would otherwise hold a hundred copies (about 0.5 MB each)."""
    if len(names) < 64:
        return names  # not worth a look-up
    if len(_NAME_SETS) >= 64:
        release_unused_names()
    if len(_NAME_SETS) >= 64:
        _NAME_SETS.clear()
    return _NAME_SETS.setdefault(names, names)


def release_unused_names() -> None:
    """Drop the shared name sets no subscription holds any more (called as streams close):
    a client that asked for 100,000 names and left must not keep them alive here."""
    for names in [n for n in _NAME_SETS.values() if sys.getrefcount(n) <= _UNUSED_REFS]:
        del _NAME_SETS[names]


class HasNames(Protocol):
    @property
    def names(self) -> frozenset[str]: ...


def release_names(subs: Iterable[HasNames]) -> None:
    """A stream closed: drop the shared name sets of its subscriptions that no other
    subscription uses, so a client that asked for 100,000 names and left keeps none here."""
    for sub in subs:
        names = sub.names
        # Held by the dict (key and value), this subscription's `Interest`, `names` and
        # the call.
        if _NAME_SETS.get(names) is names and sys.getrefcount(names) <= _UNUSED_REFS + 1:
            del _NAME_SETS[names]


def interned_name_sets() -> int:
    """How many shared name sets are kept (for tests and status)."""
    return len(_NAME_SETS)


# References to a kept set that no subscription holds: the dict's key and value, the
# list comprehension's variable and getrefcount's own argument.
_UNUSED_REFS = 4
