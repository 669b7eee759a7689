"""A reconnect storm: fresh streams that subscribe alike share their first plan and bytes.

The first plan of a stream holding nothing must cost the same whatever the
state's size: it must not evaluate a name per stream (that walked 10,000 route
tables for each of a hundred reconnecting gateways). These tests check that it
is the same plan the long way makes, that it evaluates no name, and that N
identical streams cost one selection and one join.
"""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2

from knative_xds.cache import Snapshot, SnapshotCache
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE, Resource
from knative_xds.server import plan as plan_module
from knative_xds.server import shared
from knative_xds.server.plan import Plan, plan_type
from knative_xds.server.subscription import Subscription
from knative_xds.translate import Delta

SIZE = 200


def a_state(size: int = SIZE, *, cache: SnapshotCache | None = None) -> Snapshot:
    """`size` EDS clusters, their endpoints, and one route table naming each."""
    delta = Delta()
    for i in range(size):
        name = f"default/rev-{i}"
        delta.set(Resource.of(cluster_pb2.Cluster(name=name), name=name, refs=(name,)))
        delta.set(Resource.of(endpoint_pb2.ClusterLoadAssignment(cluster_name=name), name=name))
        table = f"default/route-{i}"
        delta.set(Resource.of(route_pb2.RouteConfiguration(name=table), name=table, refs=(name,)))
    snapshot = (cache or SnapshotCache()).apply(delta)
    assert snapshot is not None
    return snapshot


def an_envoy_that_took_clusters_and_endpoints(
    snapshot: Snapshot, *, tables: frozenset[str] | None = None
) -> dict[str, Subscription]:
    """Wildcard CDS and named EDS, both ACKed; route tables asked for by name, none sent."""
    cds = Subscription(CLUSTER)
    cds.set_names(())
    cds.record_sent("1", snapshot.of(CLUSTER), version="v", full_state=True)
    cds.answer("1", None)
    eds = Subscription(ENDPOINT)
    eds.set_names(snapshot.of(ENDPOINT))
    eds.record_sent("2", snapshot.of(ENDPOINT), version="v", full_state=False)
    eds.answer("2", None)
    rds = Subscription(ROUTE)
    rds.set_names(tables if tables is not None else snapshot.of(ROUTE))
    return {CLUSTER: cds, ENDPOINT: eds, ROUTE: rds}


def a_fresh_stream(type_url: str, names: tuple[str, ...] = (), *, delta: bool) -> Subscription:
    sub = Subscription(type_url)
    if delta:
        sub.update_names(names, ())
    else:
        sub.set_names(names)
    return sub


def the_long_way(type_url: str, snapshot: Snapshot, subs, *, delta: bool) -> Plan:
    """Planned name by name: `only` naming every name bypasses the shared first plan."""
    everything = set(snapshot.of(type_url)) | set(subs[type_url].names)
    return plan_type(type_url, snapshot, subs, everything, delta=delta)


def summary(plan: Plan) -> tuple:
    out = plan.out
    if out is None:
        return (None, plan.recheck)
    return (
        out.version,
        dict(out.resources),
        out.removed,
        out.full_state,
        out.whole_snapshot,
        out.renewed,
        plan.recheck,
    )


@pytest.fixture(autouse=True)
def _fresh_shared_state():
    shared.clear()
    yield
    shared.clear()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize(
    ("type_url", "names"),
    [
        (CLUSTER, ()),
        (ENDPOINT, ()),
        (ENDPOINT, ("default/rev-1", "default/rev-2")),
        (ENDPOINT, ("default/rev-1", "default/no-such-revision")),
    ],
    ids=["wildcard-clusters", "wildcard-endpoints", "two-endpoints", "one-missing"],
)
def test_a_fresh_streams_first_plan_is_the_one_the_long_way_makes(
    type_url: str, names: tuple[str, ...], delta: bool
) -> None:
    snapshot = a_state(20)
    subs = {type_url: a_fresh_stream(type_url, names, delta=delta)}
    fast = plan_type(type_url, snapshot, subs, delta=delta)
    assert fast.out is not None and fast.out.shared
    assert summary(fast) == summary(the_long_way(type_url, snapshot, subs, delta=delta))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_route_tables_for_a_client_holding_every_cluster_are_the_long_ways(delta: bool) -> None:
    snapshot = a_state(20)
    tables = frozenset(list(snapshot.of(ROUTE))[:5]) | {"default/no-such-route"}
    for asked in (None, tables):
        subs = an_envoy_that_took_clusters_and_endpoints(snapshot, tables=asked)
        fast = plan_type(ROUTE, snapshot, subs, delta=delta)
        assert fast.out is not None and fast.out.shared
        assert summary(fast) == summary(the_long_way(ROUTE, snapshot, subs, delta=delta))


def test_route_tables_for_a_client_lacking_a_cluster_are_planned_the_long_way() -> None:
    # Its endpoints are not accepted: every table must wait, which only the long way sees.
    snapshot = a_state(20)
    subs = an_envoy_that_took_clusters_and_endpoints(snapshot)
    subs[ENDPOINT] = a_fresh_stream(ENDPOINT, tuple(snapshot.of(ENDPOINT)), delta=False)
    plan = plan_type(ROUTE, snapshot, subs, delta=False)
    assert plan.out is None and plan.recheck == frozenset(snapshot.of(ROUTE))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_the_nth_identical_fresh_stream_evaluates_no_name_and_shares_one_encoding(
    monkeypatch: pytest.MonkeyPatch, delta: bool
) -> None:
    evaluated = 0
    long_way = plan_module._evaluator

    def counting(type_url, ctx):
        evaluate = long_way(type_url, ctx)

        def count(name):
            nonlocal evaluated
            evaluated += 1
            return evaluate(name)

        return count

    monkeypatch.setattr(plan_module, "_evaluator", counting)
    snapshot = a_state()
    before = shared.computed
    bodies = set()
    for _ in range(50):
        subs = an_envoy_that_took_clusters_and_endpoints(snapshot)
        out = plan_type(ROUTE, snapshot, subs, delta=delta).out
        assert out is not None and len(out.resources) == SIZE
        bodies.add(id(shared.joined(out.resources, delta=delta)))
    # Fifty streams over 200 route tables: no name evaluated, one selection, one join.
    assert evaluated == 0
    assert shared.computed - before == 1
    assert len(bodies) == 1
    # The counter counts: the long way evaluates every name.
    the_long_way(ROUTE, snapshot, an_envoy_that_took_clusters_and_endpoints(snapshot), delta=delta)
    assert evaluated == SIZE


def test_a_new_snapshot_is_selected_anew_not_served_from_the_old_one() -> None:
    cache = SnapshotCache()
    first = a_state(10, cache=cache)
    names = tuple(first.of(ENDPOINT))
    plan_type(
        ENDPOINT, first, {ENDPOINT: a_fresh_stream(ENDPOINT, names, delta=False)}, delta=False
    )
    delta = Delta()
    changed = Resource.of(
        endpoint_pb2.ClusterLoadAssignment(cluster_name="default/rev-3-changed"),
        name="default/rev-3",
    )
    delta.set(changed)
    second = cache.apply(delta)
    assert second is not None
    sub = a_fresh_stream(ENDPOINT, names, delta=False)
    out = plan_type(ENDPOINT, second, {ENDPOINT: sub}, delta=False).out
    assert out is not None and out.resources["default/rev-3"] is changed
    assert out.version == second.version(ENDPOINT) != first.version(ENDPOINT)
