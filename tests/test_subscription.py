"""A subscription's three parts, each driven as a script with no stream and no I/O.

`Interest` takes requests and says what they change; `Delivery` takes what was
sent and how the client answered; `PlanCursor` says what the next plan must look
at; `Subscription` applies a request's change to all three.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from knative_xds.resources import CLUSTER, ENDPOINT, ROUTE, Resource
from knative_xds.server.cursor import PlanCursor
from knative_xds.server.decide import classify_sotw
from knative_xds.server.delivery import Decision, Delivery
from knative_xds.server.interest import Interest, interned_name_sets, release_names
from knative_xds.server.limits import MAX_NACK_TEXT
from knative_xds.server.subscription import Subscription


def a_resource(name: str, version: str = "v1") -> Resource:
    return Resource(type_url=CLUSTER, name=name, version=version, refs=(), sotw_entry=b"")


def a_table(name: str, *clusters: str, version: str = "v1") -> Resource:
    return Resource(
        type_url=ROUTE, name=name, version=version, refs=tuple(sorted(clusters)), sotw_entry=b""
    )


# -- what the client asked for ----------------------------------------------------------------


def test_sotw_empty_first_request_is_legacy_wildcard_until_a_name_is_asked_for() -> None:
    interest, change = Interest().sotw([])
    assert interest.wildcard and interest.legacy_allowed and change.wildcard_changed

    interest, change = interest.sotw([])  # still naming nothing: still everything
    assert interest.wildcard and not change.wildcard_changed

    interest, change = interest.sotw(["a"])
    assert not interest.wildcard and interest.names == {"a"} and change.added == {"a"}
    assert change.wildcard_changed

    interest, change = interest.sotw([])  # having named something, empty means nothing
    assert not interest.wildcard and interest.names == frozenset()
    assert change.dropped == {"a"} and not change.wildcard_changed


def test_sotw_star_is_an_explicit_wildcard_beside_names() -> None:
    interest, change = Interest().sotw(["*", "a"])
    assert interest.wildcard and interest.names == {"a"} and not interest.legacy_allowed
    assert change.added == {"a"} and change.wildcard_changed

    interest, change = interest.sotw(["a", "b"])  # `*` left out: the wildcard ends
    assert not interest.wildcard and change.wildcard_changed and change.added == {"b"}


def test_a_transition_leaves_the_interest_it_started_from_unchanged() -> None:
    before = Interest().sotw(["a"])[0]
    before.sotw(["b"])
    before.delta(["c"], ["a"], first=False)
    assert before == Interest(names=frozenset({"a"}), legacy_allowed=False)


def test_delta_empty_request_is_legacy_wildcard_only_before_anything_was_sent() -> None:
    assert Interest().delta([], [], first=True)[0].wildcard
    assert not Interest().delta([], [], first=False)[0].wildcard


def test_delta_unsubscribing_a_name_the_wildcard_covers_leaves_it_to_be_settled() -> None:
    interest, _ = Interest().delta(["*", "a"], [], first=True)
    assert interest.wildcard and interest.names == {"a"}

    interest, change = interest.delta([], ["a", "never-named"], first=False)
    assert interest.wildcard and interest.names == frozenset()
    assert change.covered == {"a"} and change.dropped == frozenset()

    interest, change = interest.delta(["b"], ["*"], first=False)
    assert not interest.wildcard and interest.names == {"b"} and change.wildcard_changed
    interest, change = interest.delta([], ["b"], first=False)
    assert change.dropped == {"b"} and change.covered == frozenset()


def test_delta_wildcard_on_and_off_in_one_request_still_makes_the_next_plan_look_at_all() -> None:
    interest, change = Interest(legacy_allowed=False).delta(["*"], ["*"], first=False)
    assert not interest.wildcard and change.wildcard_changed


def test_equal_large_name_sets_are_shared_and_released_when_the_last_stream_closes() -> None:
    names = [f"shared-{i}" for i in range(100)]
    before = interned_name_sets()
    first, second = Subscription(ROUTE), Subscription(ROUTE)
    first.set_names(names)
    second.set_names(reversed(names))
    assert first.names is second.names and interned_name_sets() == before + 1

    release_names([first])  # the other stream still uses it
    assert interned_name_sets() == before + 1
    del first
    release_names([second])
    assert interned_name_sets() == before


# -- what was sent and answered -----------------------------------------------------------------


def test_an_ack_makes_the_full_set_sent_the_accepted_set_itself() -> None:
    delivery = Delivery(CLUSTER)
    sent = {"a": a_resource("a"), "b": a_resource("b")}
    delivery.record_sent("1", sent, version="v1", full_state=True)
    assert delivery.inflight and not delivery.acked

    assert delivery.answer("1", None) is Decision.ACK
    assert delivery.acked is delivery.sent and dict(delivery.acked) == sent
    assert delivery.acked_version == "v1" and not delivery.inflight


def test_a_nack_keeps_what_was_accepted_and_records_the_version_still_running() -> None:
    delivery = Delivery(CLUSTER)
    delivery.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=True)
    delivery.answer("1", None)
    delivery.record_sent("2", {"a": a_resource("a", "v2")}, version="v2", full_state=True)

    assert delivery.answer("2", "x" * (MAX_NACK_TEXT * 2)) is Decision.NACK
    assert delivery.acked["a"].version == "v1" and delivery.acked_version == "v1"
    nack = delivery.last_nack
    assert nack is not None and nack.nonce == "2" and nack.version == "v1"
    assert len(nack.message) <= MAX_NACK_TEXT + 100  # cut, not kept whole
    # The rejected version stays as sent: it is not resent until the snapshot changes.
    assert delivery.sent["a"].version == "v2"


def test_a_nonce_not_in_flight_changes_nothing() -> None:
    delivery = Delivery(CLUSTER)
    delivery.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=True)
    delivery.answer("1", None)
    assert delivery.answer("1", None) is None  # answered already
    assert delivery.answer("7", "rejected") is None  # never sent on this stream
    assert delivery.last_nack is None and delivery.acked_version == "v1"


def test_answering_a_later_response_accepts_the_earlier_ones_still_in_flight() -> None:
    delivery = Delivery(ENDPOINT)
    delivery.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=False)
    delivery.record_sent("2", {"b": a_resource("b")}, version="v2", full_state=False)
    delivery.record_sent("3", {}, version="v3", full_state=False, removed=["a"])
    assert delivery.answer("3", None) is Decision.ACK
    assert set(delivery.acked) == {"b"} and delivery.acked_version == "v3"


def test_a_table_accepted_or_in_flight_holds_its_clusters_and_a_nack_lets_go() -> None:
    delivery = Delivery(ROUTE)
    delivery.record_sent("1", {"t": a_table("t", "c1")}, version="v1", full_state=False)
    assert delivery.holds_ref("c1")  # in flight: the client may be applying it
    delivery.answer("1", None)
    delivery.record_sent(
        "2", {"t": a_table("t", "c2", version="v2")}, version="v2", full_state=False
    )
    assert delivery.holds_ref("c1") and delivery.holds_ref("c2")

    delivery.answer("2", "rejected")
    assert delivery.holds_ref("c1") and not delivery.holds_ref("c2")


def test_a_restart_forgets_what_was_accepted_but_keeps_the_clusters_until_the_next_ack() -> None:
    delivery = Delivery(ROUTE)
    delivery.record_sent("1", {"t": a_table("t", "old")}, version="v1", full_state=False)
    delivery.answer("1", None)

    delivery.restart()
    assert not delivery.sent and not delivery.acked and not delivery.responded
    assert delivery.holds_ref("old")  # the client may still route to it

    delivery.record_sent(
        "2", {"t": a_table("t", "new", version="v2")}, version="v2", full_state=False
    )
    delivery.answer("2", None)
    assert not delivery.holds_ref("old") and delivery.holds_ref("new")
    assert delivery.held_refs == delivery.recounted_refs()


def test_a_delta_reconnect_seeds_what_matches_and_holds_back_what_is_gone() -> None:
    clusters = Delivery(CLUSTER)
    clusters.seed(
        {"same": "v1", "changed": "v0", "gone": "v1"},
        {"same": a_resource("same"), "changed": a_resource("changed")},
    )
    assert set(clusters.acked) == {"same"} and set(clusters.sent) == {"same"}
    assert clusters.held_gone == {"gone"}  # removed only once no table may name it

    tables = Delivery(ROUTE)
    tables.seed(
        {"known": "v1", "foreign": "v9", "gone": "v1"},
        {"known": a_table("known", "c"), "foreign": a_table("foreign", "c")},
    )
    assert tables.holds_ref("c") and tables.unsettled == {"gone"}
    assert tables.held_unknown == {"foreign", "gone"} and not tables.knows_held()


_TABLES = [
    a_table(f"t{i}", *(f"c{(i + j + k) % 4}" for k in range(j)), version=f"v{j}")
    for i in range(4)
    for j in range(3)
]

_STEP = st.one_of(
    st.tuples(
        st.just("send"),
        st.lists(st.sampled_from(_TABLES), max_size=4),
        st.booleans(),
        st.lists(st.sampled_from([f"t{i}" for i in range(4)]), max_size=2),
    ),
    st.tuples(st.just("answer"), st.integers(0, 3), st.booleans()),
    st.tuples(
        st.just("forget"), st.lists(st.sampled_from([f"t{i}" for i in range(4)]), max_size=2)
    ),
    st.tuples(st.just("restart")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_STEP, max_size=30))
def test_the_cluster_counts_kept_as_tables_come_and_go_equal_a_recount(steps: list) -> None:
    delivery, nonces = Delivery(ROUTE), iter(range(1, 1000))
    for step in steps:
        match step:
            case ("send", tables, full, removed):
                resources = {t.name: t for t in tables}
                gone = [n for n in removed if n not in resources]
                delivery.record_sent(
                    str(next(nonces)), resources, version="v", full_state=full, removed=gone
                )
            case ("answer", index, rejected):
                pending = sorted(delivery.inflight, key=int)
                if pending:
                    delivery.answer(pending[index % len(pending)], "no" if rejected else None)
            case ("forget", names):
                delivery.forget(names)
            case ("restart",):
                delivery.restart()
        if not delivery.recount:  # after a restart, rebuilt at the next ACK by design
            assert delivery.held_refs == delivery.recounted_refs()


# -- where planning stands ----------------------------------------------------------------------


def test_the_cursor_looks_at_everything_until_planned_and_again_when_told() -> None:
    cursor = PlanCursor()
    assert cursor.since() is None
    cursor.planned(5, {"held-back"})
    assert cursor.since() == 5 and cursor.recheck == {"held-back"}
    cursor.look_at({"new"})
    assert cursor.recheck == {"held-back", "new"} and cursor.since() == 5
    cursor.look_at_everything()
    assert cursor.since() is None
    cursor.planned(6, ())
    assert cursor.since() == 6 and cursor.recheck == set()


# -- the three composed ---------------------------------------------------------------------------


def _request(names: list[str], nonce: str = "", error: str | None = None):
    request = discovery_pb2.DiscoveryRequest(
        type_url=CLUSTER, resource_names=names, response_nonce=nonce, node=base_pb2.Node(id="n")
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(message=error))
    return request


def test_sotw_answers_to_the_latest_nonce_are_ack_or_nack_and_older_ones_stale() -> None:
    sub = Subscription(CLUSTER)
    sub.set_names(["a"])
    sub.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=True)
    sub.record_sent("2", {"a": a_resource("a", "v2")}, version="v2", full_state=True)

    assert classify_sotw(_request(["a", "b"], "1"), sub) is Decision.STALE
    assert classify_sotw(_request(["a"], "2", "bad"), sub) is Decision.NACK
    assert classify_sotw(_request(["a"], "2"), sub) is Decision.ACK
    assert classify_sotw(_request(["a", "b"], "2"), sub) is Decision.SUBSCRIPTION_CHANGE


def test_sotw_dropping_a_name_forgets_it_and_asking_for_one_plans_it_next() -> None:
    sub = Subscription(CLUSTER)
    sub.set_names(["a", "b"])
    sub.record_sent(
        "1", {"a": a_resource("a"), "b": a_resource("b")}, version="v1", full_state=False
    )
    sub.answer("1", None)
    sub.cursor.planned(1, ())

    assert sub.set_names(["b", "c"]) == {"a"}
    assert set(sub.sent) == {"b"} and set(sub.acked) == {"b"}
    assert sub.recheck == {"c"} and sub.changes_since() == 1


def test_delta_reconnect_and_wildcard_changes_make_the_next_plan_look_at_every_name() -> None:
    sub = Subscription(CLUSTER)
    assert sub.changes_since() is None  # nothing sent yet
    sub.update_names(["a"], [])
    sub.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=False)
    sub.cursor.planned(1, ())
    assert sub.changes_since() == 1

    sub.update_names(["*"], [])
    assert sub.wildcard and sub.changes_since() is None
    sub.cursor.planned(2, ())
    sub.seed_known({}, {})
    assert sub.changes_since() is None


def test_delta_names_said_missing_are_said_again_when_asked_for_anew() -> None:
    sub = Subscription(ENDPOINT)
    sub.update_names(["ghost"], [])
    sub.record_sent("1", {}, version="v1", full_state=False, removed=["ghost"])
    assert sub.told_missing == {"ghost"}
    sub.cursor.planned(1, ())
    sub.update_names(["ghost"], [])  # asked again, without unsubscribing first
    assert sub.told_missing == set() and sub.recheck == {"ghost"}


def test_delta_unsubscribing_under_the_wildcard_settles_only_what_was_sent() -> None:
    sub = Subscription(CLUSTER)
    sub.update_names(["*", "a", "b"], [])
    sub.record_sent("1", {"a": a_resource("a")}, version="v1", full_state=False)
    sub.update_names([], ["a", "b"])
    assert sub.unsettled == {"a"} and "a" in sub.sent  # sent again, or listed removed
