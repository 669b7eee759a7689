"""What fresh streams that subscribe alike are sent first: worked out once, not once each.

After a control-plane rollout every gateway reconnects at once, and each fresh
stream's first plan would evaluate every name of every type: a hundred
gateways times 10,000 route tables. A fresh stream holds nothing, so what its
first response carries depends only on the snapshot's map of that type and on
the subscription's shape (wildcard, or one interned name set): the selection is
computed for the first such stream and shared by the rest, and so are the
joined resource entries it encodes to. Each stream still gets its own header
(nonce, version), spliced in front as for any response.

Entries are kept only while their snapshot map is current, a few at most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from immutables import Map

from ..resources import Resource

# Subscription shapes kept per type: Envoy's fleet has one or two (wildcard; a
# listener's route tables), a mixed fleet a few more.
MAX_SHAPES = 16


@dataclass(frozen=True, slots=True)
class Selection:
    """What a subscription of one shape gets of one snapshot map."""

    resources: Map
    # `resources` is the snapshot's own map (the same names): its shared body is sent.
    whole: bool
    # Names asked for that the snapshot does not have, sorted (Delta lists them removed).
    missing: tuple[str, ...]


_Key = tuple[str, bool, int]
_SELECTIONS: dict[_Key, tuple[Map, frozenset[str], Selection]] = {}
# How many selections were computed rather than shared (read by tests).
computed = 0


def select(type_url: str, items: Map, *, wildcard: bool, names: frozenset[str]) -> Selection:
    """What a stream holding nothing gets of `items` under this subscription shape."""
    global computed
    key = (type_url, wildcard, id(names))
    hit = _SELECTIONS.get(key)
    # Identity, not equality: a hit is the very map and name set it was computed from
    # (both are kept with it, so neither id can be reused while the entry lives).
    if hit is not None and hit[0] is items and hit[1] is names:
        return hit[2]
    computed += 1
    selection = _selection(items, wildcard=wildcard, names=names)
    _forget_older(type_url, items)
    _SELECTIONS[key] = (items, names, selection)
    return selection


def _selection(items: Map, *, wildcard: bool, names: frozenset[str]) -> Selection:
    if wildcard:
        return Selection(items, True, ())
    present = Map((n, items[n]) for n in names if n in items)
    whole = len(present) == len(items)
    missing = tuple(sorted(n for n in names if n not in items))
    return Selection(items if whole else present, whole, missing)


def _forget_older(type_url: str, items: Map) -> None:
    """Drop this type's selections of superseded maps, and the oldest past the cap."""
    for key in [k for k, v in _SELECTIONS.items() if k[0] == type_url and v[0] is not items]:
        del _SELECTIONS[key]
    while len(_SELECTIONS) >= MAX_SHAPES * 2:
        del _SELECTIONS[next(iter(_SELECTIONS))]


# -- joined entries ---------------------------------------------------------------------

_BODIES: dict[tuple[int, bool], tuple[Mapping[str, Resource], bytes]] = {}
MAX_BODIES = 8


def joined(resources: Mapping[str, Resource], *, delta: bool) -> bytes:
    """The resources as joined response entries, sorted by name.

    Called for maps many streams are sent (a snapshot's, a selection's): their
    bytes are joined once while the map is among the few latest.
    """
    if len(resources) < 2:
        return _join(resources, delta=delta)
    key = (id(resources), delta)
    hit = _BODIES.get(key)
    if hit is not None and hit[0] is resources:
        return hit[1]
    body = _join(resources, delta=delta)
    if len(_BODIES) >= MAX_BODIES:
        del _BODIES[next(iter(_BODIES))]
    # The map is kept with its bytes, so its id cannot be reused while the entry lives.
    _BODIES[key] = (resources, body)
    return body


def _join(resources: Mapping[str, Resource], *, delta: bool) -> bytes:
    if delta:
        return b"".join(resources[n].delta_entry for n in sorted(resources))
    return b"".join(resources[n].sotw_entry for n in sorted(resources))


def clear() -> None:
    """Forget every shared selection and body (tests)."""
    _SELECTIONS.clear()
    _BODIES.clear()
