"""What to send one client next, for one type: a pure function of a snapshot and its subscriptions.

The cross-type rules that make updates hitless live here, in one place:

- Make before break, adds: a route table that names a cluster the client does
  not hold yet (CDS accepted, and its endpoints accepted if it asked for them)
  is held back until it does. Accepting is what Envoy's ACK means, so a route
  never points at a cluster that is still warming.
- Make before break, removals: a cluster that left the snapshot stays in this
  client's set (with its endpoints) while a route table the client holds or is
  applying still names it. When the client accepts tables without it, it goes.
- After a cluster is sent anew, its endpoints are sent again: Envoy re-warms a
  changed cluster but does not ask for its endpoints again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..cache import Snapshot
from ..resources import CLUSTER, ENDPOINT, FULL_STATE_TYPES, ROUTE, Resource
from .subscription import Subscription

Subscriptions = Mapping[str, Subscription]


@dataclass(frozen=True, slots=True)
class Outgoing:
    type_url: str
    version: str
    resources: dict[str, Resource]
    removed: tuple[str, ...] = ()
    # SotW LDS/CDS: `resources` is the client's whole set, not just what changed.
    full_state: bool = False
    # True when `resources` is exactly the snapshot's set, so its shared body can be sent.
    whole_snapshot: bool = False
    # Clusters sent with new content: their endpoints must be sent again.
    renewed: tuple[str, ...] = ()


def _retained_clusters(snapshot: Snapshot, subs: Subscriptions) -> dict[str, Resource]:
    cds, rds = subs.get(CLUSTER), subs.get(ROUTE)
    if cds is None or rds is None:
        return {}
    current = snapshot.of(CLUSTER)
    gone = [n for n in cds.sent if n not in current]
    if not gone:
        return {}
    needed = frozenset().union(*(t.refs for t in rds.held()))
    return {n: cds.sent[n] for n in gone if n in needed and cds.covers(n)}


def _desired(type_url: str, snapshot: Snapshot, subs: Subscriptions) -> dict[str, Resource]:
    sub = subs[type_url]
    wanted = sub.wants(snapshot.of(type_url))
    if type_url == CLUSTER:
        wanted.update(_retained_clusters(snapshot, subs))
    elif type_url == ENDPOINT:
        for name in _retained_clusters(snapshot, subs):
            kept = sub.sent.get(name)
            if kept is not None and name not in wanted:
                wanted[name] = kept
    elif type_url == ROUTE:
        for name, table in list(wanted.items()):
            before = sub.sent.get(name)
            if before is not None and before.version != table.version and not _ready(table, subs):
                wanted[name] = before  # hold back until the clusters it names are in place
            elif before is None and not _ready(table, subs):
                del wanted[name]
    return wanted


def _ready(table: Resource, subs: Subscriptions) -> bool:
    """Does the client hold every cluster (and its endpoints) this table names?"""
    cds, eds = subs.get(CLUSTER), subs.get(ENDPOINT)
    # Only a wildcard CDS client gets clusters without asking; a client that asks
    # for clusters by name (gRPC) asks after it sees the route, so it cannot wait.
    pushed = cds if cds is not None and cds.wildcard else None
    for cluster in table.refs:
        if pushed is not None and cluster not in pushed.acked:
            return False
        # Our clusters are all EDS clusters, so a client that is pushed clusters and
        # uses EDS will ask for these endpoints, perhaps only after it ACKed the cluster.
        asks = pushed is not None or (eds is not None and eds.covers(cluster))
        if eds is not None and asks and cluster not in eds.acked:
            return False
    return True


def _changed(desired: Mapping[str, Resource], sent: Mapping[str, Resource]) -> dict[str, Resource]:
    return {
        n: r for n, r in desired.items() if (old := sent.get(n)) is None or old.version != r.version
    }


def plan_sotw(type_url: str, snapshot: Snapshot, subs: Subscriptions) -> Outgoing | None:
    sub = subs[type_url]
    desired = _desired(type_url, snapshot, subs)
    version = snapshot.version(type_url)
    changed = _changed(desired, sub.sent)
    if type_url in FULL_STATE_TYPES:
        if sub.responded and desired.keys() == sub.sent.keys() and not changed:
            return None
        whole = sub.wildcard and desired.keys() == snapshot.of(type_url).keys()
        return Outgoing(
            type_url,
            version,
            desired,
            full_state=True,
            whole_snapshot=whole,
            renewed=_renewed(type_url, changed, sub),
        )
    if changed or (not sub.responded and sub.wildcard):
        return Outgoing(type_url, version, changed)
    return None


def plan_delta(type_url: str, snapshot: Snapshot, subs: Subscriptions) -> Outgoing | None:
    sub = subs[type_url]
    desired = _desired(type_url, snapshot, subs)
    changed = _changed(desired, sub.sent)
    changed.update({n: desired[n] for n in sub.unsettled if n in desired})
    removed = [n for n in sub.sent if n not in desired]
    removed += [n for n in sub.unsettled if n not in desired]
    available = snapshot.of(type_url)
    # Names asked for that do not exist: say so once, so the client stops waiting.
    removed += [
        n
        for n in sub.names
        if n not in available and n not in sub.sent and n not in sub.told_missing
    ]
    if changed or removed or not sub.responded:
        return Outgoing(
            type_url,
            snapshot.version(type_url),
            changed,
            removed=tuple(sorted(set(removed))),
            renewed=_renewed(type_url, changed, sub),
        )
    return None


def _renewed(type_url: str, changed: Mapping[str, Resource], sub: Subscription) -> tuple[str, ...]:
    if type_url != CLUSTER:
        return ()
    return tuple(n for n in changed if n in sub.sent)


def after_send(out: Outgoing, subs: Subscriptions) -> None:
    """Bookkeeping that crosses types once a response is on its way."""
    eds = subs.get(ENDPOINT)
    if out.renewed and eds is not None:
        eds.forget_sent(out.renewed)
