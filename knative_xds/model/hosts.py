"""Which Ingress holds which host: one owner per host, and per cluster-local scope.

An Ingress resolves only if every host it answers on is its own; the second
Ingress to want a host gets a Problem on `hosts` and the first keeps serving.
On the internal listener a scope is a host's first two labels
(`net.cluster_local_key`): a cluster-local rule claims its scope outright,
while an ExternalIP host, which also answers there, takes its scope only if
no other Ingress holds it (else it is *shadowed* there: still served on the
external listener, 404 on the internal one) and yields it to a cluster-local
claim. Claims are indexed both ways, so releasing costs what an Ingress holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from . import network as net
from .objects import ObjectError
from .types import Ingress, ObjectKey, Visibility

# A claim on a host, held by one Ingress at a time (`claim_key`); None for a cluster-local
# scope a host cannot have (one DNS label: the internal listener keys on two).
HostKey = tuple[Visibility, str | None]


class HostClaims:
    def __init__(self) -> None:
        # Per claim: its owner, and whether the claim is firm (not an ExternalIP host's
        # internal scope, which yields to a cluster-local rule).
        self._owner: dict[HostKey, tuple[ObjectKey, bool]] = {}
        self._of: dict[ObjectKey, set[HostKey]] = {}
        # Set when a release frees a host: an Ingress that lost a conflict, or has
        # shadowed hosts, may now get them.
        self.freed = False
        self.shadowing: set[ObjectKey] = set()
        # Ingresses whose yielding claim a firm one just took: to be resolved again.
        self.displaced: set[ObjectKey] = set()

    def claim(self, ingress: Ingress, served: Mapping[ObjectKey, Ingress]) -> Ingress:
        """Take `ingress`'s hosts: the Ingress with its shadowed hosts set, or raise
        ObjectError (field `hosts`) naming the conflict.

        `served` are the Ingresses now served: a host held by one no longer served is free.
        """
        firm: dict[HostKey, str] = {}  # claim → the first host that makes it
        soft: dict[HostKey, list[str]] = {}
        seen: set[HostKey] = set()
        # Rule order (the main public host first) decides which conflict is named.
        for rule in ingress.rules:
            for host in rule.hosts:
                vis_host = (rule.visibility, host)
                # A tag-template without {{.Tag}} (Knative accepts one) gives a tag the
                # main host; Envoy rejects a whole route table holding a domain twice.
                if vis_host in seen:
                    raise ObjectError(
                        "hosts", f"host {host!r} is given twice: check the tag-template"
                    )
                seen.add(vis_host)
                claim = claim_key(vis_host)
                if claim[1] is None:
                    raise ObjectError(
                        "hosts", f"cluster-local host {host!r} needs at least two DNS labels"
                    )
                firm.setdefault(claim, host)
                if rule.visibility is Visibility.EXTERNAL:
                    soft.setdefault(claim_key((Visibility.CLUSTER_LOCAL, host)), []).append(host)
        for claim, host in firm.items():
            owner = self._held_by_other(claim, ingress.key, served)
            if owner is not None and owner[1]:
                raise ObjectError("hosts", _conflict(claim, host, owner[0], served[owner[0]]))
        shadowed: list[str] = []
        shadow_claims: set[HostKey] = set()
        for claim, hosts in soft.items():
            if claim in firm:
                continue
            if claim[1] is None or self._held_by_other(claim, ingress.key, served):
                shadowed.extend(hosts)
                shadow_claims.add(claim)
        claims = {c: True for c in firm}
        claims.update((c, False) for c in soft if c not in firm and c not in shadow_claims)
        self.release(ingress.key, keep=set(claims))
        self._of[ingress.key] = set(claims)
        for claim, is_firm in claims.items():
            held = self._owner.get(claim)
            if held is not None and held[0] != ingress.key:
                self.displaced.add(held[0])  # a firm claim takes a yielding one's scope
            self._owner[claim] = (ingress.key, is_firm)
        if shadowed:
            self.shadowing.add(ingress.key)
        else:
            self.shadowing.discard(ingress.key)
        shadowed_hosts = tuple(sorted(shadowed))
        if ingress.internal_shadowed == shadowed_hosts:
            return ingress
        return replace(ingress, internal_shadowed=shadowed_hosts)

    def _held_by_other(
        self, claim: HostKey, key: ObjectKey, served: Mapping[ObjectKey, Ingress]
    ) -> tuple[ObjectKey, bool] | None:
        held = self._owner.get(claim)
        if held is None or held[0] == key or held[0] not in served:
            return None
        return held

    def release(self, key: ObjectKey, keep: set[HostKey] | None = None) -> None:
        """Free the hosts `key` holds (but `keep`), through its own index: scanning every
        owned host would make each resolution cost O(all hosts)."""
        freed = self._of.pop(key, set()) - (keep or set())
        for vis_host in freed:
            held = self._owner.get(vis_host)
            if held is not None and held[0] == key:
                del self._owner[vis_host]
        if keep is None:
            self.shadowing.discard(key)
        self.freed |= bool(freed)


def _conflict(claim: HostKey, host: str, owner: ObjectKey, held: Ingress) -> str:
    visibility = claim[0]
    what = "route" if held.kind == "Route" else "ingress"
    if any(host in r.hosts for r in held.rules if r.visibility is visibility):
        return f"host {host!r} is already served by {what} {owner}"
    return (
        f"cluster-local host {host!r} would share the internal scope {claim[1]!r} of"
        f" {what} {owner} (a cluster-local scope is a host's first two labels):"
        " check the tag-template"
    )


def claim_key(vis_host: HostKey) -> HostKey:
    """What a host takes from every other Ingress: an external host itself; a cluster-local
    host, its first two labels, which pick its scope on the internal listener
    (`net.cluster_local_key`). An Ingress's own hosts may share one."""
    visibility, host = vis_host
    if visibility is Visibility.CLUSTER_LOCAL:
        return (visibility, ".".join(net.cluster_local_key(host)) if "." in host else None)
    return vis_host
