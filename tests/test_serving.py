"""Knative Services and Configurations in, Revisions and Routes out: `serving.reconcile` as a table.

Each row applies objects in order to an in-memory history (what the SQLite
store holds, see test_revision_history.py) and checks what the last apply
produced: the revisions' names, the Route's traffic, or the problem's field.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from knative_xds.model import ObjectKey, RawObject, Resolver
from knative_xds.model.kinds import (
    CONFIGURATION,
    CONFIGURATION_LABEL,
    REVISION,
    ROUTE,
    SERVICE,
    SERVICE_LABEL,
    VISIBILITY_LABEL,
)
from knative_xds.model.objects import parse_revision, parse_route
from knative_xds.serving import (
    Limits,
    Reconciled,
    StoredRevision,
    child_name,
    reconcile,
    removed,
)

NS = "default"
Obj = dict[str, Any]


# -- the objects a user writes ------------------------------------------------------------


def container(image: str = "example.com/hello", **fields: Any) -> Obj:
    return {"image": image, "command": ["python", "-m", "knative_xds.local.echo"], **fields}


def service(
    name: str = "hello",
    *,
    env: str | None = None,
    template_name: str | None = None,
    traffic: list[Obj] | None = None,
    spec: Obj | None = None,
    annotations: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    kind: str = SERVICE,
    namespace: str = NS,
) -> Obj:
    """A Service (or, with kind, a Configuration); `env` stands for any template edit."""
    template_spec: Obj = spec if spec is not None else {"containers": [container()]}
    if env is not None:
        template_spec = copy.deepcopy(template_spec)
        template_spec["containers"][0]["env"] = [{"name": "TARGET", "value": env}]
    meta: Obj = {}
    if template_name:
        meta["name"] = template_name
    if annotations:
        meta["annotations"] = annotations
    template: Obj = {"spec": template_spec}
    if meta:
        template["metadata"] = meta
    obj_meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        obj_meta["labels"] = labels
    body: Obj = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": kind,
        "metadata": obj_meta,
        "spec": {"template": template},
    }
    if traffic is not None:
        body["spec"]["traffic"] = traffic
    return body


def configuration(name: str = "hello", **kw: Any) -> Obj:
    return service(name, kind=CONFIGURATION, **kw)


def with_spec(obj: Obj, path: str, value: Any) -> Obj:
    """A copy of `obj` with the field at dotted `path` set (created as needed)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    at = out
    for p in parents:
        at = at[int(p)] if isinstance(at, list) else at.setdefault(p, {})
    at[last] = value
    return out


def pct(revision: str | None, percent: int | None = None, tag: str | None = None, **kw: Any) -> Obj:
    t: Obj = dict(kw)
    if revision:
        t["revisionName"] = revision
    else:
        t["latestRevision"] = True
    if percent is not None:
        t["percent"] = percent
    if tag:
        t["tag"] = tag
    return t


# -- an in-memory history: what the store keeps, applied after each reconcile ---------------


@dataclass
class World:
    history: dict[tuple[str, str], list[StoredRevision]] = field(default_factory=dict)

    def apply(self, obj: Obj, latest_ready: str | None = None) -> Reconciled:
        raw = RawObject.from_dict(copy.deepcopy(obj), "svc.yaml")
        done = reconcile(raw, tuple(self.history.get(raw.key, ())), latest_ready=latest_ready)
        self.history.setdefault(raw.key, []).extend(done.new_entries)
        return done

    def delete(self, obj: Obj) -> tuple:
        raw = RawObject.from_dict(obj)
        gone = removed(raw.kind, raw.key, tuple(self.history.get(raw.key, ())))
        self.history[raw.key] = [e for e in self.history.get(raw.key, []) if e.owner != raw.kind]
        return gone


def run(*objs: Obj, latest_ready: str | None = None) -> Reconciled:
    world = World()
    done = None
    for obj in objs:
        done = world.apply(obj, latest_ready)
    assert done is not None
    return done


def names(done: Reconciled) -> list[str]:
    return [r["metadata"]["name"] for r in done.revisions]


def split_of(done: Reconciled) -> list[tuple[str, int, str | None]]:
    assert done.route is not None, done.problems
    return [(t["revisionName"], t["percent"], t.get("tag")) for t in done.route["spec"]["traffic"]]


# -- revisions and traffic ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    steps: tuple[Obj, ...]
    revisions: list[str]
    traffic: list[tuple[str, int, str | None]]
    new: list[str] = field(default_factory=list)
    latest_ready: str | None = None


S1 = service(env="one")
S2 = service(env="two")

CASES = [
    Case(
        "a new Service makes NAME-00001 and sends it all traffic",
        (S1,),
        ["hello-00001"],
        [("hello-00001", 100, None)],
        new=["hello-00001"],
    ),
    Case(
        "an edited template makes NAME-00002 and moves the default traffic to it",
        (S1, S2),
        ["hello-00001", "hello-00002"],
        [("hello-00002", 100, None)],
        new=["hello-00002"],
    ),
    Case(
        "the same template applied again makes nothing",
        (S1, S2, S2),
        ["hello-00001", "hello-00002"],
        [("hello-00002", 100, None)],
    ),
    Case(
        "a template reverted to an earlier content is a new template (Knative makes 00003)",
        (S1, S2, S1),
        ["hello-00001", "hello-00002", "hello-00003"],
        [("hello-00003", 100, None)],
        new=["hello-00003"],
    ),
    Case(
        "a traffic-only edit makes no revision",
        (S1, service(env="one", traffic=[pct("hello-00001", 100, tag="stable")])),
        ["hello-00001"],
        [("hello-00001", 100, "stable")],
    ),
    Case(
        "writing Knative's defaults out (timeoutSeconds 300, containerConcurrency 0) changes nothing",
        (
            S1,
            with_spec(
                with_spec(S1, "spec.template.spec.timeoutSeconds", 300),
                "spec.template.spec.containerConcurrency",
                0,
            ),
        ),
        ["hello-00001"],
        [("hello-00001", 100, None)],
    ),
    Case(
        "an annotation written as a number is the same template as the string",
        (
            service(annotations={"autoscaling.knative.dev/min-scale": 1}),
            service(annotations={"autoscaling.knative.dev/min-scale": "1"}),
        ),
        ["hello-00001"],
        [("hello-00001", 100, None)],
    ),
    Case(
        "a template's own name names the revision",
        (service(template_name="hello-blue"),),
        ["hello-blue"],
        [("hello-blue", 100, None)],
        new=["hello-blue"],
    ),
    Case(
        "a changed template with a new name makes that revision",
        (
            service(env="one", template_name="hello-blue"),
            service(env="two", template_name="hello-green"),
        ),
        ["hello-blue", "hello-green"],
        [("hello-green", 100, None)],
        new=["hello-green"],
    ),
    Case(
        "a named template then an unnamed one: the number is the generation, 00002",
        (service(env="one", template_name="hello-blue"), service(env="two")),
        ["hello-blue", "hello-00002"],
        [("hello-00002", 100, None)],
        new=["hello-00002"],
    ),
    Case(
        "only the name changed: a new revision of the same content",
        (service(template_name="hello-blue"), service(template_name="hello-green")),
        ["hello-blue", "hello-green"],
        [("hello-green", 100, None)],
        new=["hello-green"],
    ),
    Case(
        "an edit and a traffic block naming both revisions split them in one apply",
        (S1, service(env="two", traffic=[pct("hello-00001", 80), pct(None, 20)])),
        ["hello-00001", "hello-00002"],
        [("hello-00001", 80, None), ("hello-00002", 20, None)],
        new=["hello-00002"],
    ),
    Case(
        "latestRevision with a tag and 0 % gets its own host, pinned revisions the share",
        (S1, service(env="two", traffic=[pct("hello-00001", 100), pct(None, 0, tag="next")])),
        ["hello-00001", "hello-00002"],
        [("hello-00001", 100, None), ("hello-00002", 0, "next")],
        new=["hello-00002"],
    ),
    Case(
        "latestRevision follows the latest ready revision when the caller names it",
        (S1, S2),
        ["hello-00001", "hello-00002"],
        [("hello-00001", 100, None)],
        latest_ready="hello-00001",
        new=["hello-00002"],
    ),
    Case(
        "a latest-ready name the history does not have falls back to the latest created",
        (S1,),
        ["hello-00001"],
        [("hello-00001", 100, None)],
        latest_ready="hello-00042",
        new=["hello-00001"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_revisions_and_route(case: Case) -> None:
    done = run(*case.steps, latest_ready=case.latest_ready)
    assert done.problems == ()
    assert names(done) == case.revisions
    assert split_of(done) == case.traffic
    assert [e.name for e in done.new_entries] == case.new
    assert done.latest_created == case.revisions[-1]


def test_earlier_revisions_keep_their_own_template() -> None:
    done = run(S1, S2)
    envs = [r["spec"]["containers"][0]["env"][0]["value"] for r in done.revisions]
    assert envs == ["one", "two"]
    assert [
        r["metadata"]["labels"]["serving.knative.dev/configurationGeneration"]
        for r in done.revisions
    ] == ["1", "2"]


def test_a_configuration_makes_revisions_and_no_route() -> None:
    done = run(configuration(env="one"), configuration(env="two"))
    assert names(done) == ["hello-00001", "hello-00002"]
    assert done.route is None
    assert done.configuration is not None
    assert done.configuration["status"]["latestReadyRevisionName"] == "hello-00002"
    labels = done.revisions[0]["metadata"]["labels"]
    assert labels[CONFIGURATION_LABEL] == "hello" and SERVICE_LABEL not in labels


def test_the_revision_has_the_shape_the_model_reads() -> None:
    s = service(
        annotations={"autoscaling.knative.dev/initial-scale": "0"},
        spec={
            "containers": [container(ports=[{"name": "h2c", "containerPort": 8080}])],
            "timeoutSeconds": 60,
            "containerConcurrency": 10,
        },
    )
    rev = run(s).revisions[0]
    assert rev["apiVersion"] == "serving.knative.dev/v1" and rev["kind"] == REVISION
    assert rev["metadata"]["labels"][CONFIGURATION_LABEL] == "hello"
    assert rev["metadata"]["labels"][SERVICE_LABEL] == "hello"
    assert rev["metadata"]["annotations"] == {"autoscaling.knative.dev/initial-scale": "0"}
    assert rev["spec"]["containerConcurrency"] == 10
    assert rev["spec"]["containers"][0]["command"][0] == "python"
    spec = parse_revision(RawObject.from_dict(rev))
    assert (spec.protocol.value, spec.timeout_seconds) == ("h2c", 60)


def test_initial_scale_zero_is_allowed_here_and_refused_as_on_a_cluster() -> None:
    s = service(annotations={"autoscaling.knative.dev/initial-scale": "0"})
    assert run(s).problems == ()
    cluster = Limits(allow_zero_initial_scale=False)
    done = reconcile(RawObject.from_dict(s), (), limits=cluster)
    assert [p.field for p in done.problems] == [
        "spec.template.metadata.annotations.autoscaling.knative.dev/initial-scale"
    ]


def test_a_null_in_template_metadata_is_no_value() -> None:
    kubectl = with_spec(S1, "spec.template.metadata", {"creationTimestamp": None})
    assert names(run(S1, kubectl)) == ["hello-00001"]


def test_a_services_labels_reach_its_route_so_visibility_holds() -> None:
    done = run(service(labels={VISIBILITY_LABEL: "cluster-local"}))
    assert done.route is not None
    route = parse_route(RawObject.from_dict(done.route))
    assert route.cluster_local
    assert done.route["metadata"]["labels"][SERVICE_LABEL] == "hello"


def test_a_long_service_name_gets_knatives_hashed_revision_name() -> None:
    long = "a" * 60
    done = run(service(long))
    (name,) = names(done)
    assert name == child_name(long, "-00001")
    assert len(name) == 63 and name.endswith("-00001") and name.startswith("a" * 25)
    assert child_name("hello", "-00001") == "hello-00001"


def test_objects_keys_every_output_by_kind_and_name() -> None:
    done = run(S1, S2)
    key = ObjectKey(NS, "hello")
    assert set(done.objects()) == {
        (REVISION, ObjectKey(NS, "hello-00001")),
        (REVISION, ObjectKey(NS, "hello-00002")),
        (CONFIGURATION, key),
        (ROUTE, key),
    }


# -- problems: the object is refused whole, naming the field -----------------------------


def svc_spec(**fields: Any) -> Obj:
    return {"containers": [container()], **fields}


BAD = [
    (
        "a template name that is not a string",
        service(template_name=5),  # type: ignore[arg-type]
        "spec.template.metadata.name",
    ),
    (
        "an unquoted date YAML read as one (JSON has no dates)",
        service(spec=svc_spec(runtimeClassName=datetime.date(2024, 1, 1))),
        "spec.template",
    ),
    ("no containers", service(spec={"containers": []}), "spec.template.spec.containers"),
    (
        "no template",
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": SERVICE,
            "metadata": {"name": "hello"},
            "spec": {},
        },
        "spec.template",
    ),
    (
        "a container with neither image nor command",
        service(spec={"containers": [{}]}),
        "spec.template.spec.containers[0].image",
    ),
    (
        "an argument that is a number",
        service(spec={"containers": [container(args=["-p", 1])]}),
        "spec.template.spec.containers[0].args[1]",
    ),
    (
        "an env entry with no name",
        service(spec={"containers": [container(env=[{"value": "x"}])]}),
        "spec.template.spec.containers[0].env[0].name",
    ),
    (
        "two ports",
        service(
            spec={"containers": [container(ports=[{"containerPort": 1}, {"containerPort": 2}])]}
        ),
        "spec.template.spec.containers[0].ports",
    ),
    (
        "a port name other than http1 or h2c",
        service(spec={"containers": [container(ports=[{"name": "grpc"}])]}),
        "spec.template.spec.containers[0].ports[0].name",
    ),
    (
        "a port Knative reserves",
        service(spec={"containers": [container(ports=[{"containerPort": 8012}])]}),
        "spec.template.spec.containers[0].ports[0].containerPort",
    ),
    (
        "two containers, none serving",
        service(spec={"containers": [container(), container()]}),
        "spec.template.spec.containers",
    ),
    (
        "timeoutSeconds above the maximum",
        service(spec=svc_spec(timeoutSeconds=900)),
        "spec.template.spec.timeoutSeconds",
    ),
    (
        "timeoutSeconds as a string",
        service(spec=svc_spec(timeoutSeconds="60")),
        "spec.template.spec.timeoutSeconds",
    ),
    (
        "negative containerConcurrency",
        service(spec=svc_spec(containerConcurrency=-1)),
        "spec.template.spec.containerConcurrency",
    ),
    (
        "max-scale below min-scale",
        service(
            annotations={
                "autoscaling.knative.dev/min-scale": "3",
                "autoscaling.knative.dev/max-scale": "2",
            }
        ),
        "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale",
    ),
    (
        "min-scale not a number",
        service(annotations={"autoscaling.knative.dev/min-scale": "one"}),
        "spec.template.metadata.annotations.autoscaling.knative.dev/min-scale",
    ),
    (
        "target below 0.01",
        service(annotations={"autoscaling.knative.dev/target": "0"}),
        "spec.template.metadata.annotations.autoscaling.knative.dev/target",
    ),
    (
        "annotations as a list",
        with_spec(S1, "spec.template.metadata", {"annotations": ["a"]}),
        "spec.template.metadata.annotations",
    ),
    (
        "a template name without the Service's prefix",
        service(template_name="blue"),
        "spec.template.metadata.name",
    ),
    (
        "a template name that is not a DNS label",
        service(template_name="hello-Blue"),
        "spec.template.metadata.name",
    ),
    ("percents summing to 90", service(traffic=[pct(None, 90)]), "spec.traffic"),
    ("a percent over 100", service(traffic=[pct(None, 101)]), "spec.traffic[0].percent"),
    ("a target with no percent (Knative reads 0)", service(traffic=[pct(None)]), "spec.traffic"),
    (
        "a tag used twice",
        service(traffic=[pct(None, 50, tag="a"), pct("hello-00001", 50, tag="a")]),
        "spec.traffic[1].tag",
    ),
    (
        "a tag that is not a DNS-1035 label",
        service(traffic=[pct(None, 100, tag="1st")]),
        "spec.traffic[0].tag",
    ),
    (
        "configurationName in a Service",
        service(traffic=[{"configurationName": "x", "percent": 100}]),
        "spec.traffic[0].configurationName",
    ),
    (
        "latestRevision false with no revisionName",
        service(traffic=[{"latestRevision": False, "percent": 100}]),
        "spec.traffic[0].latestRevision",
    ),
    (
        "latestRevision true with a revisionName",
        service(traffic=[pct("hello-00001", 100, latestRevision=True)]),
        "spec.traffic[0].latestRevision",
    ),
    (
        "a traffic target that is not a mapping",
        service(traffic=["hello-00001"]),  # type: ignore[list-item]
        "spec.traffic[0]",
    ),
    ("a url in spec", service(traffic=[pct(None, 100, url="http://x")]), "spec.traffic[0].url"),
    ("traffic on a Configuration", configuration(traffic=[pct(None, 100)]), "spec.traffic"),
    ("a namespace that is not a DNS label", service(namespace="Default"), "metadata.namespace"),
    ("the wrong apiVersion", {**S1, "apiVersion": "serving.knative.dev/v1beta1"}, "apiVersion"),
]


@pytest.mark.parametrize(("obj", "at"), [(o, a) for _, o, a in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_field_is_one_problem_naming_it_and_nothing_is_made(obj: Obj, at: str) -> None:
    done = run(obj)
    assert [p.field for p in done.problems] == [at], done.problems
    (problem,) = done.problems
    assert problem.origin == "svc.yaml" and problem.kind == obj["kind"]
    assert str(problem).startswith(f"svc.yaml: {obj['kind']} ")
    assert (done.revisions, done.route, done.new_entries) == ((), None, ())


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        pytest.param(
            (
                service(env="one", template_name="hello-blue"),
                service(env="two", template_name="hello-blue"),
            ),
            "changed but kept the name 'hello-blue'",
            id="a changed template that keeps its explicit name",
        ),
        pytest.param(
            (
                service(env="one", template_name="hello-blue"),
                service(env="two", template_name="hello-green"),
                service(env="one", template_name="hello-blue"),
            ),
            "'hello-blue' already exists",
            id="a template going back to an earlier revision's name",
        ),
        pytest.param(
            (service(), configuration(env="other")),
            "already belongs to the Service",
            id="a Configuration named like a Service's configuration",
        ),
    ],
)
def test_a_refused_edit_names_the_template_and_leaves_history_alone(
    steps: tuple[Obj, ...], message: str
) -> None:
    world = World()
    for obj in steps[:-1]:
        assert world.apply(obj).problems == ()
    before = copy.deepcopy(world.history)
    done = world.apply(steps[-1])
    (problem,) = done.problems
    assert message in problem.message
    assert problem.field in ("spec.template.metadata.name", "metadata.name")
    assert world.history == before


# -- deletion ----------------------------------------------------------------------------


def test_deleting_a_service_removes_its_revisions_and_route_and_numbering_restarts() -> None:
    world = World()
    world.apply(S1)
    world.apply(S2)
    gone = world.delete(S2)
    key = ObjectKey(NS, "hello")
    assert gone == (
        (REVISION, ObjectKey(NS, "hello-00001")),
        (REVISION, ObjectKey(NS, "hello-00002")),
        (CONFIGURATION, key),
        (ROUTE, key),
    )
    again = world.apply(S2)
    assert names(again) == ["hello-00001"]


def test_deleting_a_configuration_leaves_a_services_revisions_alone() -> None:
    world = World()
    world.apply(S1)
    assert world.delete(configuration()) == ()
    assert names(world.apply(S1)) == ["hello-00001"]


# -- the produced objects, through the existing resolver -----------------------------------


def test_a_services_objects_resolve_to_the_split_and_tag_hosts() -> None:
    world = World()
    world.apply(S1)
    done = world.apply(
        service(env="two", traffic=[pct("hello-00001", 80), pct(None, 20, tag="latest")])
    )
    changes = {}
    for ident, obj in done.objects().items():
        raw = RawObject.from_dict(obj, "svc.yaml")
        assert raw.ident == ident
        changes[ident] = raw
    update = Resolver().apply(changes)
    assert update.problems == ()
    ingress = update.state.ingresses[ObjectKey(NS, "hello")]
    by_host = {rule.hosts[0]: rule for rule in ingress.rules}
    main = by_host["hello.default.example.com"]
    assert [(s.backend, s.percent) for s in main.paths[-1].splits] == [
        ("default/hello-00001", 80),
        ("default/hello-00002", 20),
    ]
    tagged = by_host["latest-hello.default.example.com"]
    assert [(s.backend, s.percent) for s in tagged.paths[0].splits] == [
        ("default/hello-00002", 100)
    ]
    assert sorted(b.name for b in ingress.backends) == [
        "default/hello-00001",
        "default/hello-00002",
    ]


def test_a_route_naming_the_services_configuration_follows_its_latest_ready_revision() -> None:
    done = run(S1, S2, latest_ready="hello-00001")
    user_route = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": ROUTE,
        "metadata": {"name": "other", "namespace": NS},
        "spec": {"traffic": [{"configurationName": "hello", "percent": 100}]},
    }
    assert done.configuration is not None
    objs: list[Obj] = [*done.revisions, done.configuration, user_route]
    changes = {}
    for obj in objs:
        raw = RawObject.from_dict(obj, "svc.yaml")
        changes[raw.ident] = raw
    update = Resolver().apply(changes)
    assert update.problems == ()
    ingress = update.state.ingresses[ObjectKey(NS, "other")]
    assert [b.name for b in ingress.backends] == ["default/hello-00001"]
