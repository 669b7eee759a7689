"""Planning a route table against what the client holds: which clusters it must wait for."""

from __future__ import annotations

from knative_xds.cache import Snapshot, SnapshotCache
from knative_xds.model import Backend, Ingress, ObjectKey, Path, Rule, Split, Visibility
from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE, Resource
from knative_xds.server.plan import plan_sotw, plan_type
from knative_xds.server.subscription import Subscription
from knative_xds.translate import Delta
from knative_xds.translate.clusters import cluster_resource
from knative_xds.translate.endpoints import endpoints_resource
from knative_xds.translate.routes import route_tables

DNS = Backend("default/mapped:80", dns=("localhost", 8080))
EDS = Backend("default/hello:80", service=ObjectKey("default", "hello"), port_name="http")


def table_to(cluster: str) -> Resource:
    path = Path((Split(cluster, 100),))
    ingress = Ingress(
        key=ObjectKey("default", "hello"),
        rules=(Rule(Visibility.EXTERNAL, ("hello.example.com",), (path,)),),
        backends=(),
        kind="Ingress",
    )
    external, _internal = route_tables(ingress)
    return external


def published(backend: Backend, table: Resource) -> Snapshot:
    delta = Delta()
    delta.set(cluster_resource(backend))
    if backend.dns is None:
        delta.set(endpoints_resource(backend.name, ()))
    delta.set(table)
    snapshot = SnapshotCache().apply(delta)
    assert snapshot is not None
    return snapshot


def an_envoy_holding_the_clusters(snapshot: Snapshot) -> dict[str, Subscription]:
    """Took every cluster (wildcard CDS, ACKed), asked for EDS clusters' endpoints (not
    ACKed yet), and for the route table."""
    cds = Subscription(CLUSTER, wildcard=True)
    cds.record_sent("1", snapshot.of(CLUSTER), version="v1", full_state=True)
    cds.answer("1", None)
    eds = Subscription(ENDPOINT)
    eds.set_names(n for n, r in snapshot.of(CLUSTER).items() if r.refs)
    rds = Subscription(ROUTE)
    rds.set_names(snapshot.of(ROUTE))
    return {CLUSTER: cds, ENDPOINT: eds, ROUTE: rds}


def test_a_table_naming_a_dns_cluster_is_sent_once_the_cluster_is_accepted() -> None:
    # An ExternalName Service's cluster resolves its name itself: no endpoints to wait for.
    table = table_to(DNS.name)
    snapshot = published(DNS, table)
    out = plan_sotw(ROUTE, snapshot, an_envoy_holding_the_clusters(snapshot))
    assert out is not None and set(out.resources) == {table.name}


def test_a_table_naming_an_eds_cluster_waits_for_its_endpoints_too() -> None:
    table = table_to(EDS.name)
    snapshot = published(EDS, table)
    out = plan_sotw(ROUTE, snapshot, an_envoy_holding_the_clusters(snapshot))
    assert out is None or table.name not in out.resources


def test_planning_changes_no_subscription_and_reports_what_must_be_looked_at_again() -> None:
    table = table_to(EDS.name)
    snapshot = published(EDS, table)
    subs = an_envoy_holding_the_clusters(snapshot)
    before = {t: (set(s.recheck), s.sent, s.acked, s.responded) for t, s in subs.items()}

    plan = plan_type(ROUTE, snapshot, subs, delta=False)

    # The table waits for its endpoints: it is to be looked at again, and nothing changed.
    assert table.name in plan.recheck
    assert {t: (set(s.recheck), s.sent, s.acked, s.responded) for t, s in subs.items()} == before


def test_delta_reconnect_keeps_a_held_cluster_until_the_client_answers() -> None:
    """A cluster held from before a reconnect that the snapshot lacks is not removed in
    the first answer: the client's route tables may not have been read yet."""
    table = table_to(EDS.name)
    snapshot = published(EDS, table)
    cds = Subscription(CLUSTER)
    cds.update_names((), ())
    cds.seed_known({"default/gone:80": "v0"}, snapshot.of(CLUSTER))
    subs = {CLUSTER: cds}

    first = plan_type(CLUSTER, snapshot, subs, delta=True).out
    assert first is not None and first.removed == ()

    cds.record_sent("1", first.resources, version="v1", full_state=False, removed=first.removed)
    cds.answer("1", None)
    later = plan_type(CLUSTER, snapshot, subs, delta=True).out
    assert later is not None and later.removed == ("default/gone:80",)
