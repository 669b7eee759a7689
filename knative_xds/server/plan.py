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

Planning costs what changed: given `only`, the names that may have changed for
this client (from the cache's changelog, plus names newly asked for, held back
or retained), just those are evaluated. Without it, every name is. A SotW
full-state type still sends its whole set when any of its names changed, built
from what it was last sent with the evaluated names applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..cache import Snapshot
from ..resources import CLUSTER, ENDPOINT, FULL_STATE_TYPES, ROUTE, Resource
from . import shared
from .subscription import Subscription

Subscriptions = Mapping[str, Subscription]


@dataclass(frozen=True, slots=True)
class Outgoing:
    type_url: str
    version: str
    resources: Mapping[str, Resource]
    removed: tuple[str, ...] = ()
    # SotW LDS/CDS/SRDS: `resources` is the client's whole set, not just what changed.
    full_state: bool = False
    # True when `resources` is exactly the snapshot's set, so its shared body can be sent.
    whole_snapshot: bool = False
    # Clusters sent with new content: their endpoints must be sent again.
    renewed: tuple[str, ...] = ()
    # `resources` is a map other streams are sent too: its joined entries are shared.
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What planning one type decided; the stream applies it (planning changes nothing)."""

    out: Outgoing | None
    # Names to evaluate on the next plan even if the snapshot does not change them:
    # those found waiting now, plus earlier ones this plan did not look at.
    recheck: frozenset[str]


@dataclass(slots=True)
class _Context:
    """One planning pass: the snapshot, the subscriptions, and what it found waiting."""

    snapshot: Snapshot
    subs: Subscriptions
    waiting: set[str] = field(default_factory=set)

    def retained(self, cluster: str) -> Resource | None:
        """A cluster gone from the snapshot that this client must keep for now, else None."""
        cds, rds = self.subs.get(CLUSTER), self.subs.get(ROUTE)
        if cds is None or rds is None:
            return None
        kept = cds.sent.get(cluster)
        if kept is None or cluster in self.snapshot.of(CLUSTER) or not cds.covers(cluster):
            return None
        # Still named by a route table the client holds or is applying.
        return kept if rds.holds_ref(cluster) else None

    def may_name(self, type_url: str, cluster: str) -> bool:
        """Delta reconnect: may a route table the client holds still name this cluster?

        Until the client answers a response of this type on this stream, requests it
        wrote earlier (its route tables' versions) may not have been read yet; then, a
        table it holds that we never sent may name anything.
        """
        sub, rds = self.subs[type_url], self.subs.get(ROUTE)
        if not sub.acked_version:
            return True
        return rds is not None and (not rds.knows_held() or rds.holds_ref(cluster))

    def holds_every_cluster(self) -> bool:
        """Has the client accepted this snapshot's very clusters and endpoints?

        Then every route table of the snapshot is ready for it (the snapshot is
        consistent), which a client that took the whole set answers in O(1): it
        holds the snapshot's own maps.
        """
        cds, eds = self.subs.get(CLUSTER), self.subs.get(ENDPOINT)
        if cds is None or not cds.wildcard or cds.acked is not self.snapshot.of(CLUSTER):
            return False
        return eds is None or eds.acked is self.snapshot.of(ENDPOINT)


Evaluate = Callable[[str], Resource | None]


def _evaluator(type_url: str, ctx: _Context) -> Evaluate:
    """What this client should hold under a name now (None: nothing), for one type.

    What every name needs is looked up once: a new client's first plan evaluates
    every name of a type (30,000 scopes at 5,000 Routes).
    """
    sub = ctx.subs[type_url]
    items, sent, wildcard, names = ctx.snapshot.of(type_url), sub.sent, sub.wildcard, sub.names
    keeps_removed = type_url in (CLUSTER, ENDPOINT)
    gates_tables = type_url == ROUTE and not ctx.holds_every_cluster()
    clusters = ctx.snapshot.of(CLUSTER)

    def evaluate(name: str) -> Resource | None:
        current = items.get(name) if wildcard or name in names else None
        if current is None:
            if keeps_removed and ctx.retained(name) is not None:
                ctx.waiting.add(name)
                return sent.get(name)
            return None
        if gates_tables and not _ready(current, ctx.subs, clusters):
            before = sent.get(name)
            if before is None or before.version != current.version:
                ctx.waiting.add(name)  # hold back until the clusters it names are in place
                return before
        return current

    return evaluate


def _ready(table: Resource, subs: Subscriptions, clusters: Mapping[str, Resource]) -> bool:
    """Does the client hold every cluster (and its endpoints) this table names?"""
    cds, eds = subs.get(CLUSTER), subs.get(ENDPOINT)
    # Only a wildcard CDS client gets clusters without asking; a client that asks
    # for clusters by name (gRPC) asks after it sees the route, so it cannot wait.
    pushed = cds if cds is not None and cds.wildcard else None
    for cluster in table.refs:
        if pushed is not None and cluster not in pushed.acked:
            return False
        # An EDS cluster names its endpoints (a DNS one, for an ExternalName Service,
        # names none): a client that is pushed clusters and uses EDS will ask for them,
        # perhaps only after it ACKed the cluster.
        held = clusters.get(cluster)
        if held is not None and not held.refs:
            continue
        asks = pushed is not None or (eds is not None and eds.covers(cluster))
        if eds is not None and asks and cluster not in eds.acked:
            return False
    return True


def _all_names(type_url: str, ctx: _Context) -> set[str]:
    sub = ctx.subs[type_url]
    names = set(ctx.snapshot.of(type_url)) if sub.wildcard else set(sub.names)
    return names.union(sub.sent.keys(), sub.unsettled, sub.held_gone)


def _desired(type_url: str, names: Iterable[str], ctx: _Context) -> dict[str, Resource]:
    evaluate = _evaluator(type_url, ctx)
    out = {}
    for name in names:
        resource = evaluate(name)
        if resource is not None:
            out[name] = resource
    return out


def _differs(resource: Resource | None, before: Resource | None) -> bool:
    if resource is None or before is None:
        return resource is not before
    return resource.version != before.version


def _candidates(type_url: str, ctx: _Context, only: set[str] | None) -> set[str]:
    sub = ctx.subs[type_url]
    if only is None:
        return _all_names(type_url, ctx)
    return only | sub.recheck | sub.unsettled | sub.held_gone


def plan_type(
    type_url: str,
    snapshot: Snapshot,
    subs: Subscriptions,
    only: set[str] | None = None,
    *,
    delta: bool,
) -> Plan:
    """Plan one type for one client: a pure function of the snapshot and subscriptions."""
    sub = subs[type_url]
    ctx = _Context(snapshot, subs)
    if only is None and _fresh(type_url, sub, ctx):
        return _first(type_url, snapshot, sub, delta=delta)
    candidates = _candidates(type_url, ctx, only)
    plan = _delta if delta else _sotw
    out = plan(type_url, snapshot, sub, candidates, ctx)
    # Read after planning: `ctx.waiting` is what this pass found held back.
    return Plan(out, frozenset((sub.recheck - candidates) | ctx.waiting))


def _fresh(type_url: str, sub: Subscription, ctx: _Context) -> bool:
    """Does this stream hold nothing of the type, so that its first plan is the same as
    every other fresh stream's of the same shape?

    Then no name waits: nothing was sent to retain, and a route table waits only for
    clusters the client lacks, which it lacks none of once it holds the snapshot's.
    A wildcard that also names names is planned the long way.
    """
    if sub.responded or sub.sent or sub.unsettled or sub.held_gone:
        return False
    if sub.wildcard and sub.names:
        return False
    if type_url == ENDPOINT:
        # Endpoints of a cluster kept for old routes wait (and are rechecked): only
        # a client sent no clusters, or the snapshot's very set, has none of those.
        cds = ctx.subs.get(CLUSTER)
        return cds is None or not cds.sent or cds.sent is ctx.snapshot.of(CLUSTER)
    return type_url != ROUTE or ctx.holds_every_cluster()


def _first(type_url: str, snapshot: Snapshot, sub: Subscription, *, delta: bool) -> Plan:
    """A fresh stream's first plan, from the selection shared by streams of its shape:
    what `_sotw` and `_delta` decide for it, without evaluating a name per stream."""
    items = snapshot.of(type_url)
    chosen = shared.select(type_url, items, wildcard=sub.wildcard, names=sub.names)
    # What the long way would keep to look at again: names it did not consider.
    recheck = frozenset(sub.recheck.difference(items if sub.wildcard else sub.names))
    version = snapshot.version(type_url)
    resources, whole = chosen.resources, chosen.whole
    if delta:
        out = Outgoing(type_url, version, resources, chosen.missing, whole_snapshot=whole)
    elif type_url in FULL_STATE_TYPES:
        whole = whole and sub.wildcard
        out = Outgoing(type_url, version, resources, full_state=True, whole_snapshot=whole)
    elif resources or sub.wildcard:
        out = Outgoing(type_url, version, resources, whole_snapshot=whole)
    else:
        return Plan(None, recheck)
    return Plan(replace(out, shared=True), recheck)


def plan_sotw(
    type_url: str, snapshot: Snapshot, subs: Subscriptions, only: set[str] | None = None
) -> Outgoing | None:
    return plan_type(type_url, snapshot, subs, only, delta=False).out


def plan_delta(
    type_url: str, snapshot: Snapshot, subs: Subscriptions, only: set[str] | None = None
) -> Outgoing | None:
    return plan_type(type_url, snapshot, subs, only, delta=True).out


def _sotw(
    type_url: str, snapshot: Snapshot, sub: Subscription, candidates: set[str], ctx: _Context
) -> Outgoing | None:
    evaluate = _evaluator(type_url, ctx)
    evaluated = {n: evaluate(n) for n in candidates}
    changed = {n: r for n, r in evaluated.items() if r is not None and _differs(r, sub.sent.get(n))}
    version = snapshot.version(type_url)
    if type_url in FULL_STATE_TYPES:
        gone = [n for n, r in evaluated.items() if r is None and n in sub.sent]
        if sub.responded and not changed and not gone:
            return None
        desired: Mapping[str, Resource] = _full_set(sub, changed, gone)
        whole = sub.wildcard and not ctx.waiting and _same_names(desired, snapshot.of(type_url))
        if whole:
            # The snapshot's own immutable map: every stream holding it shares one copy.
            desired = snapshot.of(type_url)
        return Outgoing(
            type_url,
            version,
            desired,
            full_state=True,
            whole_snapshot=whole,
            renewed=_renewed(type_url, changed, sub),
        )
    if changed or (not sub.responded and sub.wildcard):
        return _changes(type_url, snapshot, changed, sub)
    return None


def _changes(
    type_url: str,
    snapshot: Snapshot,
    changed: dict[str, Resource],
    sub: Subscription,
    removed: tuple[str, ...] = (),
) -> Outgoing:
    """A response of what changed; for a client that holds nothing yet and is owed the
    snapshot's whole set, that set itself (its shared map and, in SotW, its body)."""
    version, whole = snapshot.version(type_url), snapshot.of(type_url)
    renewed = _renewed(type_url, changed, sub)
    if not sub.sent and _same_names(changed, whole):
        return Outgoing(type_url, version, whole, removed, whole_snapshot=True, renewed=renewed)
    return Outgoing(type_url, version, changed, removed, renewed=renewed)


def _same_names(a: Mapping[str, Resource], b: Mapping[str, Resource]) -> bool:
    return len(a) == len(b) and all(map(b.__contains__, a))


def _full_set(
    sub: Subscription, changed: Mapping[str, Resource], gone: Iterable[str]
) -> Mapping[str, Resource]:
    """The client's whole set: what it was last sent, with what planning found changed.

    A name that was not a candidate is unchanged in the snapshot and was not
    waiting, so it would evaluate to what was sent: only candidates are evaluated.
    """
    if not sub.sent:
        return changed  # a first response: usually the snapshot's set, whose map is sent
    with sub.sent.update(changed).mutate() as desired:
        for name in gone:
            del desired[name]
        return desired.finish()


def _delta(
    type_url: str, snapshot: Snapshot, sub: Subscription, candidates: set[str], ctx: _Context
) -> Outgoing | None:
    desired = _desired(type_url, candidates, ctx)
    changed = {n: r for n, r in desired.items() if _differs(r, sub.sent.get(n))}
    changed.update({n: desired[n] for n in sub.unsettled if n in desired})
    removed = {n for n in candidates if n not in desired and (n in sub.sent or n in sub.unsettled)}
    available = snapshot.of(type_url)
    # Names asked for that do not exist: say so once, so the client stops waiting.
    removed |= {
        n
        for n in candidates
        if n in sub.names
        and n not in available
        and n not in sub.sent
        and n not in sub.told_missing
        and n not in sub.held_gone
    }
    # Held from before a reconnect and gone: removed once no route table may name it.
    removed |= {n for n in sub.held_gone if n not in desired and not ctx.may_name(type_url, n)}
    if changed or removed or not sub.responded:
        return _changes(type_url, snapshot, changed, sub, tuple(sorted(removed)))
    return None


def _renewed(type_url: str, changed: Mapping[str, Resource], sub: Subscription) -> tuple[str, ...]:
    if type_url != CLUSTER:
        return ()
    return tuple(n for n in changed if n in sub.sent)
