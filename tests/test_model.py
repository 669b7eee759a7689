"""Resolver: Knative objects in (as synth dicts), frozen State and Problems out.

Each table row names the behaviour it pins. The world is a small valid default
(revisions, a configuration, a Route that must keep serving) plus the row's input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.model import (
    ActivatorEndpoints,
    Backend,
    Endpoint,
    Ingress,
    ObjectKey,
    Path,
    Problem,
    Protocol,
    Resolver,
    Rule,
    Split,
    Visibility,
)
from knative_xds.model.from_routes import NAMESPACE_HEADER, REVISION_HEADER, TAG_HEADER
from knative_xds.model.kinds import BURST_CAPACITY_ANNOTATION, SERVICE_TYPE_LABEL
from tests.helpers import changes, deleted, ident, resolve, with_labels, with_metadata

NS = "default"
EXTERNAL = Visibility.EXTERNAL
LOCAL = Visibility.CLUSTER_LOCAL


# -- expected values ---------------------------------------------------------------------


def key(name: str, ns: str = NS) -> ObjectKey:
    return ObjectKey(ns, name)


def rev(name: str, ns: str = NS, **overrides: Any) -> Backend:
    """A revision's backend, as the Route input makes it (timeout 300 s unless given)."""
    overrides.setdefault("timeout_seconds", 300)
    return Backend(name=f"{ns}/{name}", revision=key(name, ns), **overrides)


def split(revision: str, percent: int, ns: str = NS) -> Split:
    return Split(f"{ns}/{revision}", percent, ((NAMESPACE_HEADER, ns), (REVISION_HEADER, revision)))


def splits(*pairs: tuple[str, int]) -> tuple[Split, ...]:
    return tuple(sorted(split(r, p) for r, p in pairs))


def paths(to: tuple[Split, ...], tag_headers: tuple = ()) -> tuple[Path, ...]:
    """A Route's paths: one per tag header (when on), then the default."""
    tagged = [Path((split(r, 100),), match_headers=((TAG_HEADER, t),)) for t, r in tag_headers]
    return (*tagged, Path(to))


def tag_headers_of(rule: Rule) -> tuple[tuple[str, str], ...]:
    return tuple(
        (dict(p.match_headers)[TAG_HEADER], p.splits[0].headers[1][1])
        for p in rule.paths
        if p.match_headers
    )


def Route(key: ObjectKey, rules: tuple[Rule, ...], revisions: tuple[Backend, ...]) -> Ingress:
    return Ingress(key=key, rules=rules, backends=revisions)


def ext(host: str, to: tuple[Split, ...], tag_headers: tuple = ()) -> Rule:
    return Rule(EXTERNAL, (host,), paths(to, tag_headers))


def local(name: str, to: tuple[Split, ...], tag_headers: tuple = (), ns: str = NS) -> Rule:
    base = f"{name}.{ns}"
    return Rule(LOCAL, (f"{base}.svc.cluster.local", f"{base}.svc", base), paths(to, tag_headers))


def public(name: str, to: tuple[Split, ...], domain: str = "example.com") -> tuple[Rule, ...]:
    """The two rules of a public host: its external name and its in-cluster names."""
    return (ext(f"{name}.{NS}.{domain}", to), local(name, to))


# -- the default world -------------------------------------------------------------------


def base_world() -> list[dict[str, Any]]:
    """Ready hello-1 and hello-2, unready hello-3, Configuration hello → hello-2,
    and Route `other`, which must keep serving whatever a row does to its neighbours."""
    return [
        synth.revision("hello-1", ready=True),
        synth.revision("hello-2", ready=True),
        synth.revision("hello-3", ready=False),
        synth.configuration("hello", "hello-2"),
        synth.route("other", [synth.target("hello-1", 100)]),
    ]


OTHER = Route(
    key=key("other"), rules=public("other", splits(("hello-1", 100))), revisions=(rev("hello-1"),)
)


def route_problems(resolver: Resolver) -> list[tuple[str, str, str]]:
    return [(p.kind, p.key, p.field) for p in resolver.problems()]


# -- Knative's validation rules: the error names the object and the field -----------------


@dataclass(frozen=True)
class Invalid:
    traffic: list[Any]
    field: str
    says: str  # a phrase the message must contain


T = synth.target

INVALID = {
    "percents-sum-to-90": Invalid([T("hello-1", 90)], "spec.traffic", "sum to 90"),
    "split-sums-to-90": Invalid([T("hello-1", 80), T("hello-2", 10)], "spec.traffic", "sum to 90"),
    "percents-sum-to-110": Invalid(
        [T("hello-1", 100), T("hello-2", 10)], "spec.traffic", "sum to 110"
    ),
    "missing-percent-counts-as-0": Invalid([T("hello-1")], "spec.traffic", "sum to 0"),
    "percent-above-100": Invalid(
        [T("hello-1", 101), T("hello-2", -1)], "spec.traffic[0].percent", "between 0 and 100"
    ),
    "percent-negative": Invalid(
        [T("hello-1", 100), T("hello-2", -5)], "spec.traffic[1].percent", "between 0 and 100"
    ),
    "percent-not-an-integer": Invalid(
        [{"revisionName": "hello-1", "percent": "100"}], "spec.traffic[0].percent", "integer"
    ),
    "percent-boolean": Invalid(
        [{"revisionName": "hello-1", "percent": True}], "spec.traffic[0].percent", "integer"
    ),
    "no-traffic": Invalid([], "spec.traffic", "at least one"),
    "target-not-a-mapping": Invalid(["hello-1"], "spec.traffic[0]", "mapping"),
    "both-revision-and-configuration": Invalid(
        [{"revisionName": "hello-1", "configurationName": "hello", "percent": 100}],
        "spec.traffic[0]",
        "exactly one",
    ),
    "neither-revision-nor-configuration": Invalid(
        [{"percent": 100}], "spec.traffic[0]", "exactly one"
    ),
    "latest-revision-true-with-revision-name": Invalid(
        [{"revisionName": "hello-1", "latestRevision": True, "percent": 100}],
        "spec.traffic[0].latestRevision",
        "revisionName",
    ),
    "latest-revision-false-with-configuration-name": Invalid(
        [{"configurationName": "hello", "latestRevision": False, "percent": 100}],
        "spec.traffic[0].latestRevision",
        "configurationName",
    ),
    "latest-revision-not-a-boolean": Invalid(
        [{"revisionName": "hello-1", "latestRevision": "yes", "percent": 100}],
        "spec.traffic[0].latestRevision",
        "true or false",
    ),
    "tag-upper-case": Invalid([T("hello-1", 100, tag="V2")], "spec.traffic[0].tag", "DNS-1035"),
    "tag-starts-with-digit": Invalid(
        [T("hello-1", 100, tag="2v")], "spec.traffic[0].tag", "DNS-1035"
    ),
    "tag-underscore": Invalid([T("hello-1", 100, tag="v_2")], "spec.traffic[0].tag", "DNS-1035"),
    "tag-ends-with-dash": Invalid(
        [T("hello-1", 100, tag="v2-")], "spec.traffic[0].tag", "DNS-1035"
    ),
    "tag-used-twice": Invalid(
        [T("hello-1", 50, tag="v1"), T("hello-2", 50, tag="v1")], "spec.traffic[1].tag", "twice"
    ),
    "revision-missing": Invalid(
        [T("hello-1", 50), T("nope-1", 50)], "spec.traffic[1]", "'nope-1' not found"
    ),
    "revision-not-ready": Invalid(
        [T("hello-1", 50), T("hello-3", 50)], "spec.traffic[1]", "'hello-3' is not ready"
    ),
    "zero-percent-target-must-still-exist": Invalid(
        [T("hello-1", 100), T("nope-1", 0)], "spec.traffic[1]", "not found"
    ),
    "configuration-missing": Invalid(
        [T(configuration="nope", percent=100)],
        "spec.traffic[0].configurationName",
        "'nope' not found",
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_route_is_an_error_for_that_route_only(case: Invalid) -> None:
    bad = synth.route("bad", case.traffic)
    resolver, update = resolve([*base_world(), bad])

    [problem] = resolver.problems()
    assert (problem.origin, problem.kind, problem.key, problem.field) == (
        "test.yaml",
        "Route",
        "default/bad",
        case.field,
    )
    assert case.says in problem.message
    assert update.problems == resolver.problems()
    # The other Route is served, untouched; the bad one is not.
    assert dict(update.state.ingresses) == {key("other"): OTHER}


def test_configuration_without_a_ready_revision_is_an_error() -> None:
    pending = {**synth.configuration("fresh", "x"), "status": {}}
    bad = synth.route("bad", [T(configuration="fresh", percent=100)])
    resolver, update = resolve([*base_world(), pending, bad])
    assert route_problems(resolver) == [
        ("Route", "default/bad", "spec.traffic[0].configurationName")
    ]
    assert "no ready revision" in resolver.problems()[0].message
    assert set(update.state.ingresses) == {key("other")}


# -- valid Routes: the whole resolved value ------------------------------------------------


@dataclass(frozen=True)
class Valid:
    objects: list[dict[str, Any]]
    want: Route


R1, R2 = rev("hello-1"), rev("hello-2")
HELLO = key("hello")

VALID = {
    "one-revision": Valid(
        [synth.route("hello", [T("hello-1", 100)])],
        Route(HELLO, public("hello", splits(("hello-1", 100))), (R1,)),
    ),
    "configuration-resolves-to-latest-ready": Valid(
        [synth.route("hello", [T(configuration="hello", percent=100)])],
        Route(HELLO, public("hello", splits(("hello-2", 100))), (R2,)),
    ),
    "split-90-10": Valid(
        [synth.route("hello", [T("hello-1", 90), T("hello-2", 10)])],
        Route(HELLO, public("hello", splits(("hello-1", 90), ("hello-2", 10))), (R1, R2)),
    ),
    "tag-gets-its-own-host": Valid(
        [synth.route("hello", [T("hello-1", 90), T("hello-2", 10, tag="v2")])],
        Route(
            HELLO,
            (
                *public("hello", splits(("hello-1", 90), ("hello-2", 10))),
                *public("v2-hello", splits(("hello-2", 100))),
            ),
            (R1, R2),
        ),
    ),
    "zero-percent-target-absent-from-split": Valid(
        [synth.route("hello", [T("hello-1", 100), T("hello-2", 0)])],
        Route(HELLO, public("hello", splits(("hello-1", 100))), (R1,)),
    ),
    "zero-percent-tagged-target-only-on-its-tag-host": Valid(
        [synth.route("hello", [T("hello-1", 100), T("hello-2", 0, tag="canary")])],
        Route(
            HELLO,
            (
                *public("hello", splits(("hello-1", 100))),
                *public("canary-hello", splits(("hello-2", 100))),
            ),
            (R1, R2),
        ),
    ),
    "one-revision-twice-is-merged": Valid(
        [synth.route("hello", [T("hello-1", 60), T("hello-1", 40, tag="cur")])],
        Route(
            HELLO,
            (
                *public("hello", splits(("hello-1", 100))),
                *public("cur-hello", splits(("hello-1", 100))),
            ),
            (R1,),
        ),
    ),
    "configuration-and-its-revision-merge": Valid(
        [synth.route("hello", [T("hello-2", 50), T(configuration="hello", percent=50)])],
        Route(HELLO, public("hello", splits(("hello-2", 100))), (R2,)),
    ),
    "cluster-local-has-no-external-host": Valid(
        [synth.route("hello", [T("hello-1", 100, tag="v1")], cluster_local=True)],
        Route(
            HELLO,
            (
                local("hello", splits(("hello-1", 100))),
                local("v1-hello", splits(("hello-1", 100))),
            ),
            (R1,),
        ),
    ),
    "h2c-timeout-and-burst-capacity": Valid(
        [
            synth.revision(
                "grpc-1",
                h2c=True,
                timeout=600,
                annotations={BURST_CAPACITY_ANNOTATION: "-1"},
            ),
            synth.route("hello", [T("grpc-1", 100)]),
        ],
        Route(
            HELLO,
            public("hello", splits(("grpc-1", 100))),
            (rev("grpc-1", protocol=Protocol.H2C, timeout_seconds=600, activator_always=True),),
        ),
    ),
    "revision-without-status-counts-as-ready": Valid(
        [synth.revision("plain-1"), synth.route("hello", [T("plain-1", 100)])],
        Route(HELLO, public("hello", splits(("plain-1", 100))), (rev("plain-1"),)),
    ),
    "other-namespace": Valid(
        [
            synth.revision("hello-1", namespace="team"),
            synth.route("hello", [T("hello-1", 100)], namespace="team"),
        ],
        Route(
            key("hello", "team"),
            (
                ext("hello.team.example.com", (split("hello-1", 100, ns="team"),)),
                local("hello", (split("hello-1", 100, ns="team"),), ns="team"),
            ),
            (rev("hello-1", ns="team"),),
        ),
    ),
}


@pytest.mark.parametrize("case", VALID.values(), ids=VALID.keys())
def test_valid_route_resolves_to(case: Valid) -> None:
    resolver, update = resolve([*base_world(), *case.objects])
    assert resolver.problems() == ()
    assert dict(update.state.ingresses) == {key("other"): OTHER, case.want.key: case.want}


@pytest.mark.parametrize(
    ("burst", "pinned"),
    [("-1", True), ("-1.0", True), ("200", False), ("0", False)],
    ids=["minus-one", "minus-one-float", "positive", "zero"],
)
def test_target_burst_capacity_minus_one_pins_the_activator(burst: str, pinned: bool) -> None:
    objs = [
        synth.revision("hello-1", annotations={BURST_CAPACITY_ANNOTATION: burst}),
        synth.route("hello", [T("hello-1", 100)]),
    ]
    _, update = resolve(objs)
    assert update.state.ingresses[HELLO].backends == (rev("hello-1", activator_always=pinned),)


# -- bad edits: the last good version keeps serving ----------------------------------------


GOOD = synth.route("hello", [T("hello-1", 100)])
GOOD_ROUTE = Route(HELLO, public("hello", splits(("hello-1", 100))), (R1,))
FIXED = synth.route("hello", [T("hello-1", 50), T("hello-2", 50)])
FIXED_ROUTE = Route(HELLO, public("hello", splits(("hello-1", 50), ("hello-2", 50))), (R1, R2))

BAD_EDITS = {
    "parse-error-percent-90": (synth.route("hello", [T("hello-1", 90)]), "spec.traffic"),
    "resolution-error-missing-revision": (
        synth.route("hello", [T("nope-1", 100)]),
        "spec.traffic[0]",
    ),
    "resolution-error-unready-revision": (
        synth.route("hello", [T("hello-3", 100)]),
        "spec.traffic[0]",
    ),
}


@pytest.mark.parametrize(("bad", "field"), BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_last_good_route_serves_after_bad_edit(bad: dict[str, Any], field: str) -> None:
    resolver, update = resolve([*base_world(), GOOD])
    assert update.state.ingresses[HELLO] == GOOD_ROUTE

    update = resolver.apply(changes(bad, origin="edited.yaml"))
    assert update.state.ingresses[HELLO] == GOOD_ROUTE
    assert update.changed_ingresses == frozenset()
    assert route_problems(resolver) == [("Route", "default/hello", field)]
    assert resolver.problems()[0].origin == "edited.yaml"

    update = resolver.apply(changes(FIXED))
    assert resolver.problems() == ()
    assert update.state.ingresses[HELLO] == FIXED_ROUTE
    assert update.changed_ingresses == {HELLO}


def test_deleting_a_route_with_a_problem_clears_the_problem() -> None:
    resolver, _ = resolve([*base_world(), GOOD])
    resolver.apply(changes(synth.route("hello", [T("hello-1", 90)])))
    update = resolver.apply(deleted(GOOD))
    assert resolver.problems() == ()
    assert set(update.state.ingresses) == {key("other")}
    assert update.changed_ingresses == {HELLO}


def test_route_unready_revision_becomes_ready_later() -> None:
    resolver, _ = resolve([*base_world(), synth.route("hello", [T("hello-3", 100)])])
    assert route_problems(resolver) == [("Route", "default/hello", "spec.traffic[0]")]
    update = resolver.apply(changes(synth.revision("hello-3", ready=True)))
    assert resolver.problems() == ()
    assert update.changed_ingresses == {HELLO}
    assert update.state.ingresses[HELLO].backends == (rev("hello-3"),)


def test_objects_staged_in_parts_resolve_as_if_applied_at_once() -> None:
    """A first load stages its files a part at a time; a Route may come before its Revision."""
    route = synth.route("hello", [T("hello-3", 100)])
    parts = [[route], base_world(), [synth.revision("hello-3", ready=True)]]
    staged = Resolver()
    for part in parts:
        staged.stage(changes(*part))
    update = staged.resolve()
    _, at_once = resolve([obj for part in parts for obj in part])

    assert staged.problems() == ()  # no Route was resolved before its Revision came
    assert update.changed_ingresses == at_once.changed_ingresses
    assert dict(update.state.ingresses) == dict(at_once.state.ingresses)
    assert update.state.ingresses[HELLO].backends == (rev("hello-3"),)
    assert staged.resolve().changed_ingresses == frozenset()  # nothing left staged


def test_configuration_moving_to_a_new_revision_moves_its_routes() -> None:
    route = synth.route("hello", [T(configuration="hello", percent=100)])
    resolver, _ = resolve([*base_world(), route])
    update = resolver.apply(changes(synth.configuration("hello", "hello-1")))
    assert update.changed_ingresses == {HELLO}
    assert update.state.ingresses[HELLO] == GOOD_ROUTE


# Parse errors of other kinds: the object's last good parse keeps serving.
OTHER_BAD = {
    "revision-timeout-not-an-integer": (
        {**synth.revision("hello-1", timeout=30), "spec": {"timeoutSeconds": "soon"}},
        ("Revision", "default/hello-1", "spec.timeoutSeconds"),
    ),
    "revision-timeout-negative": (
        synth.revision("hello-1", timeout=-1),
        ("Revision", "default/hello-1", "spec.timeoutSeconds"),
    ),
    "configuration-latest-not-a-string": (
        {**synth.configuration("hello", "x"), "status": {"latestReadyRevisionName": 7}},
        ("Configuration", "default/hello", "status.latestReadyRevisionName"),
    ),
    "endpoint-slice-bad-port": (
        {**synth.endpoint_slice("hello-1", ["10.0.0.9"], 8012), "ports": [{"port": 0}]},
        ("EndpointSlice", "default/hello-1-private-abcde", "ports[0].port"),
    ),
    "endpoint-slice-endpoint-not-a-mapping": (
        {**synth.endpoint_slice("hello-1", ["10.0.0.9"], 8012), "endpoints": ["10.0.0.9"]},
        ("EndpointSlice", "default/hello-1-private-abcde", "endpoints[0]"),
    ),
    "endpoint-slice-conditions-not-a-mapping": (
        {
            **synth.endpoint_slice("hello-1", ["10.0.0.9"], 8012),
            "endpoints": [{"addresses": ["10.0.0.9"], "conditions": ["ready"]}],
        },
        ("EndpointSlice", "default/hello-1-private-abcde", "endpoints[0].conditions"),
    ),
    "endpoint-slice-labels-not-a-mapping": (
        with_metadata(synth.endpoint_slice("hello-1", [], 8012), labels=["hello-1"]),
        ("EndpointSlice", "default/hello-1-private-abcde", "metadata.labels"),
    ),
    "revision-annotation-not-a-string": (
        with_metadata(synth.revision("hello-1"), annotations={BURST_CAPACITY_ANNOTATION: ["-1"]}),
        ("Revision", "default/hello-1", f"metadata.annotations.{BURST_CAPACITY_ANNOTATION}"),
    ),
    "route-labels-not-a-mapping": (
        with_metadata(synth.route("hello", [T("hello-1", 100)]), labels="app=x"),
        ("Route", "default/hello", "metadata.labels"),
    ),
}


@pytest.mark.parametrize(("bad", "where"), OTHER_BAD.values(), ids=OTHER_BAD.keys())
def test_parse_error_keeps_last_good_parse(bad: dict[str, Any], where: tuple) -> None:
    route = synth.route("hello", [T(configuration="hello", percent=100)])
    world = [*base_world(), route, synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012)]
    [good] = [o for o in world if ident(o) == ident(bad)]
    resolver, before = resolve(world)

    update = resolver.apply(changes(bad))
    assert route_problems(resolver) == [where]
    assert update.state == before.state
    assert update.changed_ingresses == frozenset()
    assert update.changed_backends == frozenset()

    resolver.apply(changes(good))  # the fix clears the problem
    assert resolver.problems() == ()


# -- host conflicts between Routes ---------------------------------------------------------

# Route `hello` tagged `v2` and Route `v2-hello` both want `v2-hello.default.example.com`.
TAGGED = synth.route("hello", [T("hello-1", 100, tag="v2")])
PLAIN = synth.route("v2-hello", [T("hello-2", 100)])
TAGGED_ROUTE = Route(
    HELLO,
    (*public("hello", splits(("hello-1", 100))), *public("v2-hello", splits(("hello-1", 100)))),
    (R1,),
)
PLAIN_ROUTE = Route(key("v2-hello"), public("v2-hello", splits(("hello-2", 100))), (R2,))


@pytest.mark.parametrize(
    ("first", "second", "second_route"),
    [(TAGGED, PLAIN, PLAIN_ROUTE), (PLAIN, TAGGED, TAGGED_ROUTE)],
    ids=["tagged-route-first", "plain-route-first"],
)
def test_host_conflict_goes_to_the_second_route_until_the_first_is_deleted(
    first: dict[str, Any], second: dict[str, Any], second_route: Route
) -> None:
    resolver, _ = resolve([*base_world(), first])
    update = resolver.apply(changes(second))

    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == ("Route", str(second_route.key), "hosts")
    assert "'v2-hello.default.example.com'" in problem.message
    assert set(update.state.ingresses) == {key("other"), key(first["metadata"]["name"])}

    update = resolver.apply(deleted(first))
    assert resolver.problems() == ()
    assert dict(update.state.ingresses) == {key("other"): OTHER, second_route.key: second_route}
    assert update.changed_ingresses == {HELLO, key("v2-hello")}


def test_host_conflict_in_one_batch_goes_to_the_later_name() -> None:
    resolver, update = resolve([*base_world(), TAGGED, PLAIN])
    assert route_problems(resolver) == [("Route", "default/v2-hello", "hosts")]
    assert update.state.ingresses[HELLO] == TAGGED_ROUTE


def test_host_conflict_freed_by_an_edit_of_the_first_route() -> None:
    resolver, _ = resolve([*base_world(), TAGGED, PLAIN])
    update = resolver.apply(changes(synth.route("hello", [T("hello-1", 100)])))
    assert resolver.problems() == ()
    assert update.changed_ingresses == {HELLO, key("v2-hello")}
    assert update.state.ingresses[key("v2-hello")] == PLAIN_ROUTE


def test_domain_template_without_namespace_makes_namespaces_conflict() -> None:
    objs = [
        synth.revision("hello-1", namespace="a"),
        synth.revision("hello-1", namespace="b"),
        synth.route("hello", [T("hello-1", 100)], namespace="a"),
        synth.route("hello", [T("hello-1", 100)], namespace="b"),
    ]
    resolver, before = resolve(objs)
    flat = synth.config_map("config-network", {"domain-template": "{{.Name}}.{{.Domain}}"})
    update = resolver.apply(changes(flat))

    [problem] = resolver.problems()
    assert (problem.key, problem.field) == ("b/hello", "hosts")
    assert "'hello.example.com'" in problem.message
    assert external_hosts(update.state.ingresses[key("hello", "a")]) == ("hello.example.com",)
    # b/hello keeps its last good hosts.
    assert update.state.ingresses[key("hello", "b")] == before.state.ingresses[key("hello", "b")]

    update = resolver.apply(deleted(flat))
    assert resolver.problems() == ()
    assert update.state == before.state


@pytest.mark.parametrize(
    ("template", "traffic"),
    [
        ("{{.Name}}", [T("hello-1", 100, tag="v1")]),
        ("t-{{.Name}}", [T("hello-1", 50, tag="v1"), T("hello-2", 50, tag="v2")]),
    ],
    ids=["tag-host-is-the-main-host", "two-tags-one-host"],
)
def test_a_tag_template_giving_one_host_twice_is_refused(template: str, traffic: list) -> None:
    # A tag-template that does not vary with the tag would give a Route one host twice:
    # the ConfigMap is refused and the default template keeps serving the Route.
    config = synth.config_map("config-network", {"tag-template": template})
    resolver, update = resolve([*base_world(), config, synth.route("hello", traffic)])
    assert route_problems(resolver) == [
        ("ConfigMap", "knative-serving/config-network", "data.tag-template")
    ]
    assert "same name" in resolver.problems()[0].message
    assert key("hello") in update.state.ingresses


# With a dot in the tag-template, Route `hello` tagged `v2` answers inside at
# `v2.hello.default…`, and Route `v2` of namespace `hello` at `v2.hello…`: different
# hosts, but the internal listener routes on the first two labels (one scope per
# cluster-local name, translate/scopes.py), so they would need the same scope.
DOTTED_TAGS = synth.config_map("config-network", {"tag-template": "{{.Tag}}.{{.Name}}"})
DOTTED_TAG = synth.route("hello", [T("hello-1", 100, tag="v2")])
SAME_LABELS = synth.route("v2", [T("hello-1", 100)], namespace="hello")
SAME_LABELS_WORLD = [*base_world(), synth.revision("hello-1", namespace="hello"), DOTTED_TAGS]


@pytest.mark.parametrize(
    ("first", "second"),
    [(DOTTED_TAG, SAME_LABELS), (SAME_LABELS, DOTTED_TAG)],
    ids=["tagged-route-first", "plain-route-first"],
)
def test_cluster_local_hosts_sharing_their_first_two_labels_conflict_until_the_first_goes(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    resolver, before = resolve([*SAME_LABELS_WORLD, first])
    first_key, second_key = ident(first)[1], ident(second)[1]
    update = resolver.apply(changes(second))

    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == ("Route", str(second_key), "hosts")
    assert "internal scope 'v2.hello'" in problem.message
    assert f"route {first_key}" in problem.message and "tag-template" in problem.message
    # The first keeps serving as it was; the second serves nothing until the conflict goes.
    assert update.state.ingresses[first_key] is before.state.ingresses[first_key]
    assert second_key not in update.state.ingresses

    update = resolver.apply(deleted(first))
    assert resolver.problems() == ()
    assert set(update.state.ingresses) == {key("other"), second_key}


def test_an_exact_cluster_local_host_conflict_names_the_host() -> None:
    # Both cluster-local: `hello` tagged `v2` and Route `v2-hello` want `v2-hello.default…`.
    tagged = synth.route("hello", [T("hello-1", 100, tag="v2")], cluster_local=True)
    plain = synth.route("v2-hello", [T("hello-2", 100)], cluster_local=True)
    resolver, update = resolve([*base_world(), tagged, plain])
    [problem] = resolver.problems()
    assert (problem.key, problem.field) == ("default/v2-hello", "hosts")
    assert problem.message == (
        "host 'v2-hello.default.svc.cluster.local' is already served by route default/hello"
    )
    assert set(update.state.ingresses) == {key("other"), HELLO}


def test_a_persistent_host_conflict_costs_nothing_on_unrelated_updates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver, _ = resolve([*base_world(), TAGGED, PLAIN])
    resolved = count_resolutions(monkeypatch, resolver)
    resolver.apply(changes(synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012)))
    assert resolved == []


# -- config-domain and config-network --------------------------------------------------------

HELLO_1 = synth.route("hello", [T("hello-1", 100, tag="v2")])
DOMAINS = {
    "default-domain": (
        {"example.org": ""},
        {},
        ("hello.default.example.org", "v2-hello.default.example.org"),
    ),
    "selector-matches": (
        {"example.org": "", "prod.example.org": "selector:\n  app: prod\n"},
        {"app": "prod"},
        ("hello.default.prod.example.org", "v2-hello.default.prod.example.org"),
    ),
    "selector-does-not-match": (
        {"example.org": "", "prod.example.org": "selector:\n  app: prod\n"},
        {"app": "dev"},
        ("hello.default.example.org", "v2-hello.default.example.org"),
    ),
    "most-specific-selector-wins": (
        {
            "example.org": "",
            "prod.example.org": "selector:\n  app: prod\n",
            "eu.prod.example.org": "selector:\n  app: prod\n  region: eu\n",
        },
        {"app": "prod", "region": "eu"},
        ("hello.default.eu.prod.example.org", "v2-hello.default.eu.prod.example.org"),
    ),
    "documentation-key-ignored": (
        {"_example": "see the docs", "example.org": ""},
        {},
        ("hello.default.example.org", "v2-hello.default.example.org"),
    ),
}


def external_hosts(route: Route) -> tuple[str, ...]:
    return tuple(h for r in route.rules if r.visibility is EXTERNAL for h in r.hosts)


@pytest.mark.parametrize(("data", "labels", "hosts"), DOMAINS.values(), ids=DOMAINS.keys())
def test_config_domain(data: dict[str, str], labels: dict[str, str], hosts: tuple) -> None:
    objs = [*base_world(), with_labels(HELLO_1, **labels), synth.config_map("config-domain", data)]
    resolver, update = resolve(objs)
    assert resolver.problems() == ()
    assert external_hosts(update.state.ingresses[HELLO]) == hosts


NETWORK = {
    "defaults": ({}, ("hello.default.example.com", "v2-hello.default.example.com"), ()),
    "domain-template": (
        {"domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}"},
        ("hello-default.example.com", "v2-hello-default.example.com"),
        (),
    ),
    "domain-template-spaces-and-case": (
        {"domain-template": "{{ .Name }}.{{ .Namespace }}.Apps.{{.Domain}}"},
        ("hello.default.apps.example.com", "v2-hello.default.apps.example.com"),
        (),
    ),
    "tag-template": (
        {"tag-template": "{{.Name}}-{{.Tag}}"},
        ("hello.default.example.com", "hello-v2.default.example.com"),
        (),
    ),
    "tag-header-based-routing": (
        {"tag-header-based-routing": "Enabled"},
        ("hello.default.example.com", "v2-hello.default.example.com"),
        (("v2", "hello-1"),),
    ),
}


@pytest.mark.parametrize(("data", "hosts", "tag_headers"), NETWORK.values(), ids=NETWORK.keys())
def test_config_network(data: dict[str, str], hosts: tuple, tag_headers: tuple) -> None:
    objs = [*base_world(), HELLO_1, synth.config_map("config-network", data)]
    resolver, update = resolve(objs)
    assert resolver.problems() == ()
    route = update.state.ingresses[HELLO]
    assert external_hosts(route) == hosts
    # Only the main host carries header routes (on both listeners).
    assert [tag_headers_of(r) for r in route.rules] == [tag_headers, tag_headers, (), ()]


BAD_CONFIG = {
    "domain-template-unknown-field": (
        "config-network",
        {"domain-template": "{{.Name}}.{{.Foo}}.{{.Domain}}"},
        "data.domain-template",
    ),
    "tag-template-unknown-field": (
        "config-network",
        {"tag-template": "{{.Tag}}-{{.Namespace}}"},
        "data.tag-template",
    ),
    "tag-header-routing-not-a-switch": (
        "config-network",
        {"tag-header-based-routing": "sometimes"},
        "data.tag-header-based-routing",
    ),
    "domain-template-not-a-string": (
        "config-network",
        {"domain-template": {"Name": "x"}},
        "data.domain-template",
    ),
    "data-not-a-mapping": ("config-network", ["domain-template"], "data"),
    "domain-selector-not-yaml": ("config-domain", {"bad.org": "selector: [app"}, "data.bad.org"),
    "domain-selector-not-a-mapping": (
        "config-domain",
        {"bad.org": "selector: [app]"},
        "data.bad.org",
    ),
}


@pytest.mark.parametrize(("name", "data", "field"), BAD_CONFIG.values(), ids=BAD_CONFIG.keys())
def test_invalid_config_map_is_an_error_on_its_key_and_keeps_the_last_good(
    name: str, data: Any, field: str
) -> None:
    good = {
        "config-network": {"domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}"},
        "config-domain": {"example.org": ""},
    }
    objs = [*base_world(), HELLO_1, *(synth.config_map(n, d) for n, d in good.items())]
    resolver, before = resolve(objs)
    assert resolver.problems() == ()
    assert external_hosts(before.state.ingresses[HELLO])[0] == "hello-default.example.org"

    update = resolver.apply(changes({**synth.config_map(name, {}), "data": data}))
    assert route_problems(resolver) == [("ConfigMap", f"knative-serving/{name}", field)]
    assert update.state.ingresses == before.state.ingresses
    assert update.changed_ingresses == frozenset()

    resolver.apply(changes(synth.config_map(name, good[name])))
    assert resolver.problems() == ()


def test_deleting_config_network_restores_the_defaults() -> None:
    objs = [*base_world(), HELLO_1, synth.config_map("config-network", NETWORK["tag-template"][0])]
    resolver, _ = resolve(objs)
    update = resolver.apply(deleted(synth.config_map("config-network", {})))
    assert update.changed_ingresses == {HELLO}
    assert external_hosts(update.state.ingresses[HELLO])[1] == "v2-hello.default.example.com"


# -- EndpointSlices ------------------------------------------------------------------------


def ep(address: str, port: int) -> Endpoint:
    return Endpoint(address, port)


def slice_with_ports(name: str, ports: list[tuple[str, int]], **kw: Any) -> dict[str, Any]:
    s = synth.endpoint_slice(name, ["10.0.0.1"], 1, **kw)
    s["ports"] = [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]
    return s


QUEUE_PORTS = [("http-autometric", 9090), ("http", 8012), ("http2", 8013)]
PUBLIC = {SERVICE_TYPE_LABEL: "Public"}

SLICES = {
    "only-ready-endpoints": (
        [synth.endpoint_slice("hello-1", ["10.0.0.2", "10.0.0.1"], 8012, not_ready=["10.0.0.3"])],
        {},
        {"hello-1": (ep("10.0.0.1", 8012), ep("10.0.0.2", 8012))},
    ),
    "ready-unset-counts-as-ready": (
        [
            {
                **synth.endpoint_slice("hello-1", [], 8012),
                "endpoints": [{"addresses": ["10.0.0.1"]}],
            }
        ],
        {},
        {"hello-1": (ep("10.0.0.1", 8012),)},
    ),
    "no-ready-endpoint-no-pods": (
        [synth.endpoint_slice("hello-1", [], 8012, not_ready=["10.0.0.3"])],
        {},
        {},
    ),
    "http-port-chosen-by-name": (
        [slice_with_ports("hello-1", QUEUE_PORTS)],
        {},
        {"hello-1": (ep("10.0.0.1", 8012),)},
    ),
    "http2-port-for-h2c-revision": (
        [synth.revision("grpc-1", h2c=True), slice_with_ports("grpc-1", QUEUE_PORTS)],
        {},
        {"grpc-1": (ep("10.0.0.1", 8013),)},
    ),
    "two-slices-of-one-revision-merge": (
        [
            synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012),
            synth.endpoint_slice("hello-1", ["10.0.0.2"], 8012, suffix="fghij"),
        ],
        {},
        {"hello-1": (ep("10.0.0.1", 8012), ep("10.0.0.2", 8012))},
    ),
    "public-slice-ignored": (
        [with_labels(synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012), **PUBLIC)],
        {},
        {},
    ),
    "public-slice-followed-when-asked": (
        [
            with_labels(synth.endpoint_slice("hello-1", ["10.0.0.1"], 80), **PUBLIC),
            synth.endpoint_slice("hello-1", ["10.0.0.9"], 8012, suffix="priv"),
        ],
        {"follow_public_endpoints": True},
        {"hello-1": (ep("10.0.0.1", 80),)},
    ),
    "slice-without-revision-label-ignored": (
        [{**synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012), "metadata": {"name": "x"}}],
        {},
        {},
    ),
}


@pytest.mark.parametrize(("objs", "kwargs", "pods"), SLICES.values(), ids=SLICES.keys())
def test_endpoint_slices_give_ready_pods(objs: list, kwargs: dict, pods: dict) -> None:
    # Endpoints are chosen for the backends in use: route to every revision of the row.
    used = {"hello-1", *pods}  # `other` routes to hello-1
    routes = [synth.route(f"to-{r}", [T(r, 100)]) for r in sorted(used - {"hello-1"})]
    _, update = resolve([*base_world(), *objs, *routes], **kwargs)
    want = {f"{NS}/{r}": () for r in used} | {f"{NS}/{r}": eps for r, eps in pods.items()}
    assert dict(update.state.endpoints) == want
    assert update.state.activator == ActivatorEndpoints()


ACTIVATORS = {
    "http-and-http2-ports": (
        [synth.activator_slice("10.1.0.1", 8012, 8013)],
        ActivatorEndpoints(http=(ep("10.1.0.1", 8012),), h2c=(ep("10.1.0.1", 8013),)),
    ),
    "two-activator-pods": (
        [
            synth.activator_slice("10.1.0.2", 8012, 8013),
            {
                **synth.activator_slice("10.1.0.1", 8012, 8013),
                "metadata": {
                    **synth.activator_slice("10.1.0.1", 8012)["metadata"],
                    "name": "activator-service-abc",
                },
            },
        ],
        ActivatorEndpoints(
            http=(ep("10.1.0.1", 8012), ep("10.1.0.2", 8012)),
            h2c=(ep("10.1.0.1", 8013), ep("10.1.0.2", 8013)),
        ),
    ),
    "activator-name-in-another-namespace-is-not-the-activator": (
        [{**synth.activator_slice("10.1.0.1", 8012), "metadata": {"name": "a", "namespace": "x"}}],
        ActivatorEndpoints(),
    ),
}


@pytest.mark.parametrize(("objs", "want"), ACTIVATORS.values(), ids=ACTIVATORS.keys())
def test_activator_slice_is_recognised(objs: list, want: ActivatorEndpoints) -> None:
    _, update = resolve([*base_world(), *objs])
    assert update.state.activator == want
    # No pod is ready: the revision in use is served by the activator.
    assert dict(update.state.endpoints) == {f"{NS}/hello-1": want.http}


# -- Update: exactly what changed ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    objs: list[dict[str, Any]]
    routes: set[str] = field(default_factory=set)
    # Revision backends whose definition or chosen endpoints changed, or that came or went.
    backends: set[str] = field(default_factory=set)
    delete: bool = False
    resolved: set[str] | None = None  # Routes re-resolved, when the row pins it


A = synth.route("a", [T("hello-1", 100)])
B = synth.route("b", [T(configuration="hello", percent=100, tag="v2")])
SLICE_1 = synth.endpoint_slice("hello-1", ["10.0.0.1"], 8012)

STEPS = {
    "route-edit": Step([synth.route("a", [T("hello-1", 50), T("hello-2", 50)])], routes={"a"}),
    "route-reapplied-unchanged": Step([A], resolved=set()),
    "route-added": Step([synth.route("c", [T("hello-2", 100)])], routes={"c"}),
    "route-deleted": Step([A], routes={"a"}, delete=True),
    "revision-edit-reaches-its-routes-only": Step(
        [synth.revision("hello-1", timeout=30)],
        routes={"a", "other"},
        backends={"hello-1"},
        resolved={"a", "other"},
    ),
    "revision-edit-without-effect": Step(
        [synth.revision("hello-1", command=["serve"])], resolved={"a", "other"}
    ),
    "configuration-moves": Step(
        [synth.configuration("hello", "hello-1")], routes={"b"}, backends={"hello-2"}
    ),
    "endpoint-slice-added": Step([SLICE_1], backends={"hello-1"}, resolved=set()),
    "endpoint-slice-of-unused-revision": Step(
        [synth.endpoint_slice("hello-9", ["10.0.0.5"], 8012)], resolved=set()
    ),
    "endpoint-slice-only-not-ready": Step(
        [synth.endpoint_slice("hello-1", [], 8012, not_ready=["10.0.0.1"])], resolved=set()
    ),
    "activator-slice": Step(
        [synth.activator_slice("10.1.0.1", 8012, 8013)],
        backends={"hello-1", "hello-2"},
        resolved=set(),
    ),
    "tag-template-reaches-tagged-routes": Step(
        [synth.config_map("config-network", {"tag-template": "{{.Tag}}-at-{{.Name}}"})],
        routes={"b"},
    ),
    "unrelated-config-map": Step([synth.config_map("config-features", {"x": "y"})], resolved=set()),
}


def count_resolutions(monkeypatch: pytest.MonkeyPatch, resolver: Resolver) -> list[str]:
    """Record the name of each Route the resolver re-resolves from now on."""
    seen: list[str] = []
    real = resolver._resolve_one

    def counting(ident: tuple[str, ObjectKey]) -> None:
        seen.append(ident[1].name)
        real(ident)

    monkeypatch.setattr(resolver, "_resolve_one", counting)
    return seen


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_update_names_exactly_what_changed(step: Step, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver, _ = resolve([*base_world(), A, B])
    resolved = count_resolutions(monkeypatch, resolver)
    update = resolver.apply(deleted(*step.objs) if step.delete else changes(*step.objs))

    assert resolver.problems() == ()
    assert update.changed_ingresses == {key(n) for n in step.routes}
    assert update.changed_backends == {f"{NS}/{n}" for n in step.backends}
    if step.resolved is not None:
        assert set(resolved) == step.resolved


def test_unchanged_state_is_the_same_object() -> None:
    resolver, first = resolve([*base_world(), A])
    again = resolver.apply(changes(A, synth.config_map("config-features", {})))
    assert again.state is first.state


def test_route_identity_kept_when_re_resolved_to_an_equal_value() -> None:
    resolver, first = resolve([*base_world(), A])
    again = resolver.apply(changes(synth.revision("hello-1", command=["serve"])))
    assert again.state.ingresses[key("a")] is first.state.ingresses[key("a")]


def test_problem_text_names_origin_object_and_field() -> None:
    problem = Problem("a.yaml", "Route", "default/bad", "spec.traffic", "percents must sum")
    assert str(problem) == "a.yaml: Route default/bad: spec.traffic: percents must sum"
