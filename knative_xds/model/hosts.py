"""Which Route holds which host: one owner per host, and per cluster-local scope.

A Route resolves only if every host it answers on is its own; the second Route to
want a host gets a Problem on `hosts` and the first keeps serving. Claims are
indexed both ways, so releasing a Route's hosts costs what it holds, not every host.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import network as net
from .objects import ObjectError
from .types import ObjectKey, Route, Visibility

# A claim on a host, held by one Route at a time (`claim_key`).
HostKey = tuple[Visibility, str]


class HostClaims:
    def __init__(self) -> None:
        self._owner: dict[HostKey, ObjectKey] = {}
        self._of: dict[ObjectKey, set[HostKey]] = {}
        # Set when a release frees a host: a Route that lost a conflict may now win.
        self.freed = False

    def claim(self, route: Route, routes: Mapping[ObjectKey, Route]) -> None:
        """Take `route`'s hosts, or raise ObjectError (field `hosts`) naming the conflict.

        `routes` are the Routes now served: a host held by one no longer served is free.
        """
        # Rule order (a Route's main public host first) decides which conflict is named.
        wanted = [(rule.visibility, h) for rule in route.rules for h in rule.hosts]
        seen: set[HostKey] = set()
        claims: dict[HostKey, str] = {}  # claim → the first host that makes it
        for vis_host in wanted:
            # A tag-template without {{.Tag}} (Knative accepts one) gives a tag the main
            # host; Envoy rejects a whole route table holding a domain twice.
            if vis_host in seen:
                raise ObjectError(
                    "hosts", f"host {vis_host[1]!r} is given twice: check the tag-template"
                )
            seen.add(vis_host)
            claims.setdefault(claim_key(vis_host), vis_host[1])
        for claim, host in claims.items():
            owner = self._owner.get(claim)
            if owner is not None and owner != route.key and owner in routes:
                raise ObjectError("hosts", _conflict(claim, host, owner, routes[owner]))
        self.release(route.key, keep=set(claims))
        self._of[route.key] = set(claims)
        for claim in claims:
            self._owner[claim] = route.key

    def release(self, key: ObjectKey, keep: set[HostKey] | None = None) -> None:
        """Free the hosts `key` holds (but `keep`), through its own index: scanning every
        owned host would make each Route's resolution cost O(all hosts)."""
        freed = self._of.pop(key, set()) - (keep or set())
        for vis_host in freed:
            if self._owner.get(vis_host) == key:
                del self._owner[vis_host]
        self.freed |= bool(freed)


def _conflict(claim: HostKey, host: str, owner: ObjectKey, held: Route) -> str:
    visibility = claim[0]
    if any(host in r.hosts for r in held.rules if r.visibility is visibility):
        return f"host {host!r} is already served by route {owner}"
    return (
        f"cluster-local host {host!r} would share the internal scope {claim[1]!r} of"
        f" route {owner} (a cluster-local scope is a host's first two labels):"
        " check the tag-template"
    )


def claim_key(vis_host: HostKey) -> HostKey:
    """What a host takes from every other Route: an external host itself; a cluster-local
    host, its first two labels, which pick its scope on the internal listener
    (`net.cluster_local_key`). A Route's own hosts may share one."""
    visibility, host = vis_host
    if visibility is Visibility.CLUSTER_LOCAL:
        return (visibility, ".".join(net.cluster_local_key(host)))
    return vis_host
