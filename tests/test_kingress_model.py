"""Resolver, KIngress input: a KIngress (with its Services, slices, Secrets) in, its Ingress out.

Each table row names the behaviour it pins. The world is a small valid default
(Service `hello`, and KIngress `other` with its Service, which must keep serving
whatever a row does) plus the row's input. Expected values are written out here;
Knative's probe (`InsertProbe`) is added to them by `probed`, written from
knative/networking `pkg/ingress/ingress.go`, not from the code under test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path as FilePath
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.model import (
    Backend,
    Certificate,
    Endpoint,
    HttpOption,
    Ingress,
    ObjectKey,
    Path,
    Protocol,
    Resolver,
    Rule,
    Split,
    Tls,
    Visibility,
)
from knative_xds.model.probe import compute_hash
from tests.helpers import changes, deleted, resolve
from tests.kingress_fixtures import (
    CERT_PEM,
    KEY_PEM,
    NS,
    Obj,
    a_kingress,
    a_local_rule,
    a_path,
    a_port,
    a_rule,
    a_secret,
    a_service,
    a_service_slice,
    a_split,
    a_tls,
    rotated,
    with_spec,
)

EXTERNAL = Visibility.EXTERNAL
LOCAL = Visibility.CLUSTER_LOCAL
H2C = Protocol.H2C
HASH = "K-Network-Hash"
ACTIVATOR = synth.activator_slice("10.1.0.1", 8012, 8013)


# -- expected values ---------------------------------------------------------------------------


def key(name: str, ns: str = NS) -> ObjectKey:
    return ObjectKey(ns, name)


def svc(name: str = "hello", port: int = 80, port_name: str = "http", **kw: Any) -> Backend:
    """A plain Service's backend: cluster `<ns>/<service>:<port>`, its slices at `port_name`."""
    return Backend(f"{NS}/{name}:{port}", service=key(name), port_name=port_name, **kw)


def to(backend: Backend, percent: int = 100, **headers: str) -> Split:
    return Split(backend.name, percent, tuple(sorted(headers.items())))


def path(
    *splits: Split, prefix: str = "", match: Any = (), headers: Any = (), host: str = ""
) -> Path:
    return Path(
        splits or (to(svc()),),
        prefix=prefix,
        match_headers=tuple(sorted(dict(match).items())),
        headers=tuple(sorted(dict(headers).items())),
        rewrite_host=host,
    )


def ext(*hosts: str, paths: tuple[Path, ...] = ()) -> Rule:
    return Rule(EXTERNAL, hosts or ("hello.default.example.com",), paths or (path(),))


def cluster_local(name: str = "hello", ns: str = NS, paths: tuple[Path, ...] = ()) -> Rule:
    """Knative's ExpandedHosts of `name.ns.svc.cluster.local`: it and its two short forms."""
    hosts = (f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}")
    return Rule(LOCAL, hosts, paths or (path(),))


def hash_of(kingress: Obj) -> str:
    meta = kingress["metadata"]
    return compute_hash(kingress["spec"], meta["namespace"], meta["name"])


def probed(rule: Rule, digest: str) -> Rule:
    """Knative's InsertProbe: before all paths, a copy of each that also matches
    `K-Network-Hash: override` and sets `K-Network-Hash: <hash>`."""
    probes = tuple(
        replace(
            p,
            match_headers=tuple(sorted({**dict(p.match_headers), HASH: "override"}.items())),
            headers=tuple(sorted({**dict(p.headers), HASH: digest}.items())),
        )
        for p in rule.paths
    )
    return replace(rule, paths=(*probes, *rule.paths))


def served(
    kingress: Obj,
    rules: tuple[Rule, ...],
    backends: tuple[Backend, ...],
    *,
    tls: tuple[Tls, ...] = (),
    shadowed: tuple[str, ...] = (),
) -> Ingress:
    """The Ingress `kingress` resolves to: `rules` as written in it, plus Knative's probe."""
    digest = hash_of(kingress)
    meta = kingress["metadata"]
    option = HttpOption(kingress["spec"].get("httpOption") or "Enabled")
    return Ingress(
        key=key(meta["name"], meta["namespace"]),
        rules=tuple(probed(r, digest) for r in rules),
        backends=tuple(sorted(backends, key=lambda b: b.name)),
        tls=tls,
        http_option=option,
        kind="Ingress",
        generation=meta.get("generation", 0),
        internal_shadowed=shadowed,
    )


# -- the default world -------------------------------------------------------------------------

OTHER_KINGRESS = a_kingress(
    "other", a_rule("other.default.example.com", paths=[a_path(a_split("other"))])
)
OTHER = served(
    OTHER_KINGRESS,
    (ext("other.default.example.com", paths=(path(to(svc("other"))),)),),
    (svc("other"),),
)


def base_world() -> list[Obj]:
    return [a_service("hello"), a_service("other"), OTHER_KINGRESS]


def problems_of(resolver: Resolver) -> list[tuple[str, str, str]]:
    return [(p.kind, p.key, p.field) for p in resolver.problems()]


def bad_paths(*paths: Obj) -> Obj:
    return a_kingress("bad", a_rule("bad.default.example.com", paths=list(paths)))


def bad_splits(*splits: Obj) -> Obj:
    return bad_paths(a_path(*splits))


# -- Knative's validation rules: the Problem names the object and the exact field -------------


@dataclass(frozen=True)
class Invalid:
    kingress: Obj
    field: str
    says: str  # a phrase the message must contain


P0 = "spec.rules[0].http.paths[0]"

INVALID = {
    "rules-empty": Invalid(with_spec(a_kingress("bad"), rules=[]), "spec.rules", "at least one"),
    "spec-missing": Invalid(
        {k: v for k, v in a_kingress("bad").items() if k != "spec"}, "spec", "missing"
    ),
    "paths-empty": Invalid(bad_paths(), "spec.rules[0].http.paths", "at least one path"),
    "splits-empty": Invalid(bad_paths({"splits": []}), f"{P0}.splits", "at least one split"),
    "percents-total-90": Invalid(
        bad_splits(a_split(percent=50), a_split("b", percent=40)), f"{P0}.splits", "total 90"
    ),
    "percents-total-110": Invalid(
        bad_splits(a_split(percent=100), a_split("b", percent=10)), f"{P0}.splits", "total 110"
    ),
    "two-splits-without-percent-total-0": Invalid(
        bad_splits(a_split(), a_split("b")), f"{P0}.splits", "total 0"
    ),
    "percent-above-100": Invalid(
        bad_splits(a_split(percent=0), a_split("b", percent=101)),
        f"{P0}.splits[1].percent",
        "between 0 and 100",
    ),
    "percent-negative": Invalid(
        bad_splits(a_split(percent=-1), a_split("b", percent=101)),
        f"{P0}.splits[0].percent",
        "between 0 and 100",
    ),
    "service-namespace-missing": Invalid(
        bad_splits(a_split(ns=None)), f"{P0}.splits[0].serviceNamespace", "required"
    ),
    "service-namespace-another-namespace": Invalid(
        bad_splits(a_split(percent=50), a_split(ns="team", percent=50)),
        f"{P0}.splits[1].serviceNamespace",
        "'default'",
    ),
    "service-name-missing": Invalid(
        bad_splits(a_split(service="")), f"{P0}.splits[0].serviceName", "required"
    ),
    "service-port-missing": Invalid(
        bad_splits(a_split(port=None)), f"{P0}.splits[0].servicePort", "port number or name"
    ),
    "service-port-zero": Invalid(
        bad_splits(a_split(port=0)), f"{P0}.splits[0].servicePort", "port number or name"
    ),
    "error-in-a-later-rule-path-and-split": Invalid(
        a_kingress(
            "bad",
            a_rule("bad.default.example.com"),
            a_rule(
                "bad-2.default.example.com",
                paths=[
                    a_path(),
                    a_path(),
                    a_path(a_split(percent=60), a_split("b", percent=140), path="/x"),
                ],
            ),
        ),
        "spec.rules[1].http.paths[2].splits[1].percent",
        "between 0 and 100",
    ),
    "visibility-not-a-knative-value": Invalid(
        a_kingress("bad", a_rule("bad.default.example.com", visibility="Public")),
        "spec.rules[0].visibility",
        "ExternalIP or ClusterLocal",
    ),
    "visibility-bad-in-second-rule": Invalid(
        a_kingress("bad", a_rule("bad.default.example.com"), a_rule("b.x", visibility="Local")),
        "spec.rules[1].visibility",
        "'Local'",
    ),
    "http-option-not-a-knative-value": Invalid(
        a_kingress("bad", a_rule("bad.default.example.com"), http_option="Sometimes"),
        "spec.httpOption",
        "Enabled or Redirected",
    ),
    "tls-without-secret-name": Invalid(
        a_kingress(
            "bad",
            a_rule("bad.default.example.com"),
            tls=[{"hosts": ["bad.default.example.com"], "secretNamespace": NS}],
        ),
        "spec.tls[0].secretName",
        "required",
    ),
    "tls-without-secret-namespace": Invalid(
        a_kingress("bad", a_rule("bad.default.example.com"), tls=[a_tls(secret="s", ns=None)]),
        "spec.tls[0].secretNamespace",
        "required",
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_kingress_is_a_problem_on_its_field_for_it_only(case: Invalid) -> None:
    resolver, update = resolve([*base_world(), a_service("b"), case.kingress])

    [problem] = resolver.problems()
    assert (problem.origin, problem.kind, problem.key, problem.field) == (
        "test.yaml",
        "Ingress",
        "default/bad",
        case.field,
    )
    assert case.says in problem.message
    assert dict(update.state.ingresses) == {key("other"): OTHER}


# -- valid KIngresses: the whole resolved value ------------------------------------------------


@dataclass(frozen=True)
class Valid:
    kingress: Obj
    objects: list[Obj]  # beside the base world
    rules: tuple[Rule, ...]  # as the KIngress writes them (the probe is added by `served`)
    backends: tuple[Backend, ...]


REV = Backend(f"{NS}/hello-00001:80", revision=key("hello-00001"))

VALID = {
    "single-split-without-percent-takes-100": Valid(a_kingress(), [], (ext(),), (svc(),)),
    "service-port-by-number": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port=8080))])),
        [a_service("hello", a_port(8080, "web"))],
        (ext(paths=(path(to(svc(port=8080, port_name="web"))),)),),
        (svc(port=8080, port_name="web"),),
    ),
    "service-port-by-name": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port="web"))])),
        [a_service("hello", a_port(80, "http"), a_port(8080, "web"))],
        (ext(paths=(path(to(svc(port=8080, port_name="web"))),)),),
        (svc(port=8080, port_name="web"),),
    ),
    "h2c-by-port-name-http2": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port=81))])),
        [a_service("hello", a_port(81, "http2"))],
        (ext(paths=(path(to(svc(port=81, port_name="http2", protocol=H2C))),)),),
        (svc(port=81, port_name="http2", protocol=H2C),),
    ),
    "h2c-by-port-name-h2c": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port="h2c"))])),
        [a_service("hello", a_port(81, "h2c"))],
        (ext(paths=(path(to(svc(port=81, port_name="h2c", protocol=H2C))),)),),
        (svc(port=81, port_name="h2c", protocol=H2C),),
    ),
    "h2c-by-app-protocol": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port=9000))])),
        [a_service("hello", a_port(9000, "grpc", app_protocol="kubernetes.io/h2c"))],
        (ext(paths=(path(to(svc(port=9000, port_name="grpc", protocol=H2C))),)),),
        (svc(port=9000, port_name="grpc", protocol=H2C),),
    ),
    "other-app-protocol-stays-http1": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(port=9000))])),
        [a_service("hello", a_port(9000, "web", app_protocol="http"))],
        (ext(paths=(path(to(svc(port=9000, port_name="web"))),)),),
        (svc(port=9000, port_name="web"),),
    ),
    "external-name-service-is-resolved-by-dns": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split("mapped", port=80))])),
        [a_service("mapped", a_port(80, "http"), external_name="gw.knative-xds.svc.cluster.local")],
        (
            ext(
                paths=(
                    path(
                        to(Backend(f"{NS}/mapped:80", dns=("gw.knative-xds.svc.cluster.local", 80)))
                    ),
                )
            ),
        ),
        (Backend(f"{NS}/mapped:80", dns=("gw.knative-xds.svc.cluster.local", 80)),),
    ),
    "revision-service-is-a-revision-backend": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split("hello-00001"))])),
        [a_service("hello-00001", a_port(80, "http"), revision="hello-00001")],
        (ext(paths=(path(to(REV)),)),),
        (REV,),
    ),
    "split-headers-path-headers-match-prefix-and-host-rewrite": Valid(
        a_kingress(
            "hello",
            a_rule(
                paths=[
                    a_path(
                        a_split(percent=70, headers={"Knative-Serving-Revision": "a"}),
                        a_split("b", percent=30, headers={"Knative-Serving-Revision": "b"}),
                        path="/api",
                        match={"X-Canary": "yes", "A-First": "1"},
                        headers={"X-Pre": "set"},
                        rewrite_host="hello.default.svc.cluster.local",
                    ),
                    a_path(),
                ]
            ),
        ),
        [a_service("b")],
        (
            ext(
                paths=(
                    path(
                        to(svc(), 70, **{"Knative-Serving-Revision": "a"}),
                        to(svc("b"), 30, **{"Knative-Serving-Revision": "b"}),
                        prefix="/api",
                        match={"X-Canary": "yes", "A-First": "1"},
                        headers={"X-Pre": "set"},
                        host="hello.default.svc.cluster.local",
                    ),
                    path(),
                )
            ),
        ),
        (svc(), svc("b")),
    ),
    "zero-percent-split-gets-no-traffic": Valid(
        a_kingress("hello", a_rule(paths=[a_path(a_split(percent=100), a_split("b", percent=0))])),
        [a_service("b")],
        (ext(paths=(path(to(svc())),)),),
        # Its Service must exist (it is validated), but no cluster is built for it.
        (svc(),),
    ),
    "cluster-local-host-answers-its-short-names": Valid(
        a_kingress("hello", a_local_rule("hello")), [], (cluster_local("hello"),), (svc(),)
    ),
    "cluster-local-and-external-rules-keep-their-order": Valid(
        a_kingress("hello", a_rule(), a_local_rule("hello")),
        [],
        (ext(), cluster_local("hello")),
        (svc(),),
    ),
    "external-host-is-not-expanded": Valid(
        a_kingress("hello", a_rule("hello.example.com", "hello.svc.cluster.local.example.com")),
        [],
        (ext("hello.example.com", "hello.svc.cluster.local.example.com"),),
        (svc(),),
    ),
    "short-name-of-all-digits-is-no-host": Valid(
        # Knative's isValidTopLevelDomain: `1234` is not a host, `1234.svc` is.
        a_kingress("hello", a_rule("1234.svc.cluster.local", visibility="ClusterLocal")),
        [],
        (Rule(LOCAL, ("1234.svc.cluster.local", "1234.svc"), (path(),)),),
        (svc(),),
    ),
    "hosts-are-lower-cased": Valid(
        a_kingress("hello", a_rule("Hello.Default.Example.COM")), [], (ext(),), (svc(),)
    ),
    "visibility-omitted-is-external-ip": Valid(
        a_kingress("hello", a_rule(visibility=None)), [], (ext(),), (svc(),)
    ),
    "visibility-empty-is-external-ip": Valid(
        a_kingress("hello", a_rule(visibility="")), [], (ext(),), (svc(),)
    ),
}


@pytest.mark.parametrize("case", VALID.values(), ids=VALID.keys())
def test_valid_kingress_resolves_to(case: Valid) -> None:
    resolver, update = resolve([*base_world(), *case.objects, case.kingress])
    assert resolver.problems() == ()
    want = served(case.kingress, case.rules, case.backends)
    assert dict(update.state.ingresses) == {key("other"): OTHER, want.key: want}


def test_http_option_redirected_is_kept_for_the_translator() -> None:
    kingress = a_kingress(http_option="Redirected")
    _, update = resolve([*base_world(), kingress])
    assert update.state.ingresses[key("hello")].http_option is HttpOption.REDIRECTED


# -- Knative's probe ---------------------------------------------------------------------------


def test_each_path_is_preceded_by_its_probe_copy_setting_the_spec_hash() -> None:
    kingress = a_kingress(
        "hello",
        a_rule(
            paths=[
                a_path(a_split(), path="/api", match={"X-Canary": "yes"}, headers={"X-Pre": "1"}),
                a_path(a_split()),
            ]
        ),
    )
    _, update = resolve([*base_world(), kingress])
    digest = compute_hash(kingress["spec"], "default", "hello")
    [rule] = update.state.ingresses[key("hello")].rules
    one = to(svc())
    assert rule.paths == (
        Path(
            (one,),
            prefix="/api",
            match_headers=((HASH, "override"), ("X-Canary", "yes")),
            headers=((HASH, digest), ("X-Pre", "1")),
        ),
        Path((one,), match_headers=((HASH, "override"),), headers=((HASH, digest),)),
        Path(
            (one,), prefix="/api", match_headers=(("X-Canary", "yes"),), headers=(("X-Pre", "1"),)
        ),
        Path((one,)),
    )


def test_probe_hash_is_the_one_go_computes_for_the_spec() -> None:
    data = FilePath(__file__).parent / "data" / "kingress-hash-vectors.json"
    [vector] = [v for v in json.loads(data.read_text(encoding="utf-8")) if v["name"] == "probe"]
    ns, name = vector["namespace"], vector["name"]
    kingress = {**a_kingress(name, ns=ns), "spec": vector["spec"]}
    _, update = resolve([a_service("runtime-svc", ns=ns), kingress])
    [rule] = update.state.ingresses[key(name, ns)].rules
    assert rule.paths[0].headers == ((HASH, vector["hash"]),)


def test_a_spec_edit_changes_the_probe_hash_and_a_metadata_edit_does_not() -> None:
    resolver, before = resolve([*base_world(), a_kingress()])
    old = before.state.ingresses[key("hello")]
    update = resolver.apply(changes(a_kingress(generation=2)))
    assert update.state.ingresses[key("hello")].rules == old.rules
    update = resolver.apply(changes(a_kingress("hello", a_rule(paths=[a_path(path="/v2")]))))
    new_probe = update.state.ingresses[key("hello")].rules[0].paths[0]
    assert dict(new_probe.headers)[HASH] != dict(old.rules[0].paths[0].headers)[HASH]


# -- the ingress class -------------------------------------------------------------------------

CLASSES = {
    "our-class-is-served": ("xds.ingress.networking.knative.dev", True),
    "another-class-is-never-served": ("kourier.ingress.networking.knative.dev", False),
    "an-empty-class-is-never-served": ("", False),
    "no-class-annotation-is-never-served": (None, False),
}


@pytest.mark.parametrize(("ingress_class", "ours"), CLASSES.values(), ids=CLASSES.keys())
def test_only_kingresses_of_our_class_are_served(ingress_class: str | None, ours: bool) -> None:
    # Even an invalid KIngress of another class is untouched: no Problem written for it.
    broken = with_spec(a_kingress("broken", ingress_class=ingress_class), rules=[])
    resolver, update = resolve([*base_world(), a_kingress(ingress_class=ingress_class), broken])
    want = {key("other"), key("hello")} if ours else {key("other")}
    assert set(update.state.ingresses) == want
    assert problems_of(resolver) == ([("Ingress", "default/broken", "spec.rules")] if ours else [])


def test_the_class_served_is_the_resolvers() -> None:
    kourier = "kourier.ingress.networking.knative.dev"
    objs = [a_service(), a_kingress("ours"), a_kingress("theirs", ingress_class=kourier)]
    _, update = resolve(objs, ingress_class=kourier)
    assert set(update.state.ingresses) == {key("theirs")}


def test_a_kingress_moving_to_another_class_is_withdrawn_and_back_is_served() -> None:
    resolver, _ = resolve([*base_world(), a_kingress(), a_service_slice("hello")])
    update = resolver.apply(
        changes(a_kingress(ingress_class="kourier.ingress.networking.knative.dev"))
    )
    assert dict(update.state.ingresses) == {key("other"): OTHER}
    assert update.changed_ingresses == {key("hello")}
    assert "default/hello:80" not in update.state.backends
    assert "default/hello:80" not in update.state.endpoints

    update = resolver.apply(changes(a_kingress()))
    assert update.state.ingresses[key("hello")] == served(a_kingress(), (ext(),), (svc(),))
    assert update.state.endpoints["default/hello:80"] == (Endpoint("10.2.0.1", 8080),)


# -- Services: what a split names --------------------------------------------------------------

SPLIT0 = f"{P0}.splits[0]"

UNRESOLVED = {
    "service-missing-names-it": (
        [],
        a_kingress("bad", a_rule("bad.example.com", paths=[a_path(a_split("nope"))])),
        f"{SPLIT0}.serviceName",
        "service 'nope' not found in namespace 'default'",
    ),
    "port-number-missing-names-what-the-service-has": (
        [a_service("multi", a_port(80, "http"), a_port(9090, "admin"), a_port(81, ""))],
        a_kingress("bad", a_rule("bad.example.com", paths=[a_path(a_split("multi", 8080))])),
        f"{SPLIT0}.servicePort",
        "no port 8080 (it has http:80, admin:9090, (unnamed):81)",
    ),
    "port-name-missing-names-what-the-service-has": (
        [a_service("multi", a_port(80, "http"))],
        a_kingress("bad", a_rule("bad.example.com", paths=[a_path(a_split("multi", "grpc"))])),
        f"{SPLIT0}.servicePort",
        "no port 'grpc' (it has http:80)",
    ),
    "port-number-is-not-a-port-name": (
        # servicePort 80 names the Service's port 80, never a port named "80".
        [a_service("multi", a_port(8080, "80"))],
        a_kingress("bad", a_rule("bad.example.com", paths=[a_path(a_split("multi", 80))])),
        f"{SPLIT0}.servicePort",
        "no port 80",
    ),
    "a-zero-percent-split-must-still-resolve": (
        [],
        a_kingress(
            "bad",
            a_rule(
                "bad.example.com", paths=[a_path(a_split(percent=100), a_split("nope", percent=0))]
            ),
        ),
        f"{P0}.splits[1].serviceName",
        "'nope' not found",
    ),
}


@pytest.mark.parametrize(
    ("objs", "kingress", "field", "says"), UNRESOLVED.values(), ids=UNRESOLVED.keys()
)
def test_a_split_whose_service_or_port_is_missing_is_a_problem(
    objs: list[Obj], kingress: Obj, field: str, says: str
) -> None:
    resolver, update = resolve([*base_world(), *objs, kingress])
    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == ("Ingress", "default/bad", field)
    assert says in problem.message
    assert set(update.state.ingresses) == {key("other")}


def test_the_service_appearing_later_resolves_the_kingress() -> None:
    kingress = a_kingress("hello", a_rule(paths=[a_path(a_split("late"))]))
    resolver, _ = resolve([*base_world(), kingress])
    assert problems_of(resolver) == [("Ingress", "default/hello", f"{SPLIT0}.serviceName")]

    update = resolver.apply(changes(a_service("late")))
    assert resolver.problems() == ()
    assert update.changed_ingresses == {key("hello")}
    assert update.state.ingresses[key("hello")] == served(
        kingress, (ext(paths=(path(to(svc("late"))),)),), (svc("late"),)
    )


def test_the_service_port_appearing_later_resolves_the_kingress() -> None:
    kingress = a_kingress("hello", a_rule(paths=[a_path(a_split(port="web"))]))
    resolver, _ = resolve([*base_world(), kingress])
    assert problems_of(resolver) == [("Ingress", "default/hello", f"{SPLIT0}.servicePort")]
    update = resolver.apply(changes(a_service("hello", a_port(80, "http"), a_port(8080, "web"))))
    assert resolver.problems() == ()
    assert update.state.ingresses[key("hello")].backends == (svc(port=8080, port_name="web"),)


# -- endpoints: a plain Service's slices, a revision's activator or pods -----------------------


@dataclass(frozen=True)
class Slices:
    service: Obj
    port: int | str  # the split's servicePort
    slices: list[Obj]
    want: dict[str, tuple[Endpoint, ...]]  # backend name → endpoints


SLICES = {
    "ready-endpoints-at-the-slice-port-named-like-the-service-port": Slices(
        a_service("web", a_port(80, "http"), a_port(9090, "admin")),
        "admin",
        [
            a_service_slice(
                "web",
                ["10.2.0.2", "10.2.0.1"],
                {"http": 8080, "admin": 9000},
                not_ready=["10.2.0.9"],
            )
        ],
        {"default/web:9090": (Endpoint("10.2.0.1", 9000), Endpoint("10.2.0.2", 9000))},
    ),
    "port-by-number-finds-its-name-on-the-slice": Slices(
        a_service("web", a_port(80, "http"), a_port(9090, "admin")),
        80,
        [a_service_slice("web", ["10.2.0.1"], {"admin": 9000, "http": 8080})],
        {"default/web:80": (Endpoint("10.2.0.1", 8080),)},
    ),
    "an-unnamed-port-matches-the-unnamed-slice-port": Slices(
        a_service("web", a_port(80, "")),
        80,
        [a_service_slice("web", ["10.2.0.1"], {"": 8080})],
        {"default/web:80": (Endpoint("10.2.0.1", 8080),)},
    ),
    "every-slice-of-the-service-counts-and-no-other": Slices(
        a_service("web"),
        80,
        [
            a_service_slice("web", ["10.2.0.1"]),
            a_service_slice("web", ["10.2.0.3"], suffix="second"),
            a_service_slice("web-canary", ["10.9.9.9"]),
        ],
        {"default/web:80": (Endpoint("10.2.0.1", 8080), Endpoint("10.2.0.3", 8080))},
    ),
    "no-slice-yet-is-no-endpoint": Slices(a_service("web"), 80, [], {"default/web:80": ()}),
}


@pytest.mark.parametrize("case", SLICES.values(), ids=SLICES.keys())
def test_a_plain_service_backend_takes_its_slices_ready_endpoints(case: Slices) -> None:
    kingress = a_kingress("hello", a_rule(paths=[a_path(a_split("web", case.port))]))
    resolver, update = resolve([*base_world(), case.service, *case.slices, kingress])
    assert resolver.problems() == ()
    assert {n: update.state.endpoints[n] for n in case.want} == case.want


def test_a_slice_change_updates_only_its_services_endpoints() -> None:
    kingress = a_kingress("hello", a_rule(paths=[a_path(a_split("web"))]))
    resolver, _ = resolve([*base_world(), a_service("web"), a_service_slice("web"), kingress])
    update = resolver.apply(changes(a_service_slice("web", ["10.2.0.7"])))
    assert update.changed_ingresses == frozenset()
    assert update.changed_backends == {"default/web:80"}
    assert update.state.endpoints["default/web:80"] == (Endpoint("10.2.0.7", 8080),)


REVISIONS = {
    "http1-revision": (a_port(80, "http"), "http", 8012, Protocol.HTTP1),
    "h2c-revision": (a_port(81, "http2"), "http2", 8013, H2C),
}


@pytest.mark.parametrize(
    ("port", "pod_port_name", "port_no", "protocol"), REVISIONS.values(), ids=REVISIONS.keys()
)
def test_a_revision_service_gets_the_activator_until_a_private_slice_is_ready(
    port: Obj, pod_port_name: str, port_no: int, protocol: Protocol
) -> None:
    service = a_service("hello-00001", port, revision="hello-00001")
    kingress = a_kingress("hello", a_rule(paths=[a_path(a_split("hello-00001", port["port"]))]))
    name = f"default/hello-00001:{port['port']}"
    resolver, update = resolve([*base_world(), ACTIVATOR, service, kingress])
    assert update.state.backends[name] == Backend(name, protocol, revision=key("hello-00001"))
    assert update.state.endpoints[name] == (Endpoint("10.1.0.1", port_no),)

    unready = synth.endpoint_slice(
        "hello-00001", [], port_no, port_name=pod_port_name, not_ready=["10.0.0.5"]
    )
    update = resolver.apply(changes(unready))
    assert update.state.endpoints[name] == (Endpoint("10.1.0.1", port_no),)

    ready = synth.endpoint_slice("hello-00001", ["10.0.0.5"], port_no, port_name=pod_port_name)
    update = resolver.apply(changes(ready))
    assert update.changed_backends == {name}
    assert update.state.endpoints[name] == (Endpoint("10.0.0.5", port_no),)

    update = resolver.apply(deleted(ready))  # scaled to zero: the activator again
    assert update.state.endpoints[name] == (Endpoint("10.1.0.1", port_no),)


# -- TLS ---------------------------------------------------------------------------------------

SECRET = key("hello-tls")
TLS_KINGRESS = a_kingress(tls=[a_tls()])
TLS_INGRESS = served(
    TLS_KINGRESS, (ext(),), (svc(),), tls=(Tls(("hello.default.example.com",), SECRET),)
)


def cert(chain: bytes = CERT_PEM) -> Certificate:
    return Certificate(SECRET, chain, KEY_PEM)


def test_a_kingress_with_tls_serves_its_secrets_certificate() -> None:
    resolver, update = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    assert resolver.problems() == ()
    assert update.state.ingresses[key("hello")] == TLS_INGRESS
    assert dict(update.state.certificates) == {SECRET: cert()}


def test_tls_hosts_are_expanded_like_rule_hosts() -> None:
    kingress = a_kingress("hello", a_local_rule(), tls=[a_tls("hello.default.svc.cluster.local")])
    _, update = resolve([*base_world(), a_secret(), kingress])
    assert update.state.ingresses[key("hello")].tls == (
        Tls(("hello.default.svc.cluster.local", "hello.default.svc", "hello.default"), SECRET),
    )


def test_a_missing_secret_is_a_problem_until_it_appears() -> None:
    resolver, update = resolve([*base_world(), TLS_KINGRESS])
    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == (
        "Ingress",
        "default/hello",
        "spec.tls[0].secretName",
    )
    assert "'hello-tls' not found in namespace 'default'" in problem.message
    assert set(update.state.ingresses) == {key("other")}

    update = resolver.apply(changes(a_secret()))
    assert resolver.problems() == ()
    assert update.changed_ingresses == {key("hello")}
    assert update.changed_certificates == {SECRET}
    assert update.state.ingresses[key("hello")] == TLS_INGRESS
    assert dict(update.state.certificates) == {SECRET: cert()}


def test_an_edit_naming_a_missing_secret_keeps_the_last_good_serving() -> None:
    resolver, _ = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    update = resolver.apply(changes(a_kingress(tls=[a_tls(secret="nope")])))
    assert problems_of(resolver) == [("Ingress", "default/hello", "spec.tls[0].secretName")]
    assert update.changed_ingresses == frozenset()
    assert update.state.ingresses[key("hello")] == TLS_INGRESS
    assert dict(update.state.certificates) == {SECRET: cert()}


def test_deleting_the_secret_keeps_the_last_good_certificate_serving() -> None:
    resolver, _ = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    update = resolver.apply(deleted(a_secret()))
    assert problems_of(resolver) == [("Ingress", "default/hello", "spec.tls[0].secretName")]
    assert update.state.ingresses[key("hello")] == TLS_INGRESS
    assert dict(update.state.certificates) == {SECRET: cert()}


def test_rotating_the_secret_changes_only_the_certificate() -> None:
    resolver, before = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    update = resolver.apply(changes(a_secret(cert=rotated("rotated"))))
    assert update.changed_certificates == {SECRET}
    assert update.changed_ingresses == frozenset()
    assert update.changed_backends == frozenset()
    assert update.state.ingresses[key("hello")] is before.state.ingresses[key("hello")]
    assert dict(update.state.certificates) == {SECRET: cert(rotated("rotated"))}


def test_a_secret_that_is_not_a_tls_certificate_keeps_the_last_good_one() -> None:
    resolver, _ = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    broken = {**a_secret(), "data": {"tls.crt": "bm90IHBlbQ==", "tls.key": "bm90IHBlbQ=="}}
    update = resolver.apply(changes(broken))
    assert problems_of(resolver) == [("Secret", "default/hello-tls", "data.tls.crt")]
    assert dict(update.state.certificates) == {SECRET: cert()}
    assert update.state.ingresses[key("hello")] == TLS_INGRESS


def test_a_certificate_no_served_kingress_names_is_not_in_the_state() -> None:
    resolver, _ = resolve([*base_world(), a_secret(), TLS_KINGRESS])
    update = resolver.apply(changes(a_kingress()))
    assert update.changed_certificates == {SECRET}
    assert dict(update.state.certificates) == {}


# -- bad edits: the last good KIngress keeps serving -------------------------------------------

GOOD = a_kingress()
GOOD_INGRESS = served(GOOD, (ext(),), (svc(),))
FIXED = a_kingress("hello", a_rule(paths=[a_path(a_split(percent=50), a_split("b", percent=50))]))

BAD_EDITS = {
    "parse-error-percents-total-90": (
        a_kingress("hello", a_rule(paths=[a_path(a_split(percent=90))])),
        f"{P0}.splits",
    ),
    "parse-error-bad-visibility": (
        a_kingress("hello", a_rule(visibility="Public")),
        "spec.rules[0].visibility",
    ),
    "resolution-error-missing-service": (
        a_kingress("hello", a_rule(paths=[a_path(a_split("nope"))])),
        f"{SPLIT0}.serviceName",
    ),
    "resolution-error-missing-port": (
        a_kingress("hello", a_rule(paths=[a_path(a_split(port=8443))])),
        f"{SPLIT0}.servicePort",
    ),
    "resolution-error-missing-secret": (a_kingress(tls=[a_tls()]), "spec.tls[0].secretName"),
}


@pytest.mark.parametrize(("bad", "field"), BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_last_good_kingress_serves_after_a_bad_edit(bad: Obj, field: str) -> None:
    resolver, update = resolve([*base_world(), a_service("b"), GOOD])
    assert update.state.ingresses[key("hello")] == GOOD_INGRESS

    update = resolver.apply(changes(bad, origin="edited.yaml"))
    assert update.state.ingresses[key("hello")] == GOOD_INGRESS
    assert update.changed_ingresses == frozenset()
    assert problems_of(resolver) == [("Ingress", "default/hello", field)]
    assert resolver.problems()[0].origin == "edited.yaml"

    update = resolver.apply(changes(FIXED))
    assert resolver.problems() == ()
    assert update.changed_ingresses == {key("hello")}
    assert update.state.ingresses[key("hello")] == served(
        FIXED, (ext(paths=(path(to(svc(), 50), to(svc("b"), 50)),)),), (svc(), svc("b"))
    )


def test_deleting_a_kingress_with_a_problem_clears_it_and_withdraws_the_last_good() -> None:
    resolver, _ = resolve([*base_world(), GOOD])
    resolver.apply(changes(a_kingress("hello", a_rule(visibility="Public"))))
    update = resolver.apply(deleted(GOOD))
    assert resolver.problems() == ()
    assert dict(update.state.ingresses) == {key("other"): OTHER}
    assert "default/hello:80" not in update.state.backends


# -- a Route and a KIngress of one namespace/name ---------------------------------------------

ROUTE = synth.route("hello", [synth.target("hello-1", 100)])
SAME_NAME = a_kingress("hello", a_rule("kingress.example.com"))


ARRIVALS = {
    "route-first": ([ROUTE], [SAME_NAME]),
    "kingress-first": ([SAME_NAME], [ROUTE]),
    "one-batch": ([ROUTE, SAME_NAME], []),
}


@pytest.mark.parametrize(("first", "then"), ARRIVALS.values(), ids=ARRIVALS.keys())
def test_a_route_and_a_kingress_of_one_name_serve_the_route(
    first: list[Obj], then: list[Obj]
) -> None:
    resolver, _ = resolve([*base_world(), synth.revision("hello-1"), *first])
    update = resolver.apply(changes(*then))

    [problem] = resolver.problems()
    assert (problem.kind, problem.key, problem.field) == (
        "Ingress",
        "default/hello",
        "metadata.name",
    )
    assert "route default/hello" in problem.message
    hello = update.state.ingresses[key("hello")]
    assert hello.kind == "Route"
    assert hello.rules[0].hosts[0] == "hello.default.example.com"

    # The Route goes: the KIngress is served in its place.
    update = resolver.apply(deleted(ROUTE))
    assert resolver.problems() == ()
    assert update.state.ingresses[key("hello")] == served(
        SAME_NAME, (ext("kingress.example.com"),), (svc(),)
    )


def test_deleting_the_kingress_of_a_routes_name_leaves_the_route() -> None:
    resolver, _ = resolve([*base_world(), synth.revision("hello-1"), ROUTE, SAME_NAME])
    route = resolver.apply({}).state.ingresses[key("hello")]
    update = resolver.apply(deleted(SAME_NAME))
    assert resolver.problems() == ()
    assert update.state.ingresses[key("hello")] == route


# -- shadowing: an ExternalIP host on the internal listener ------------------------------------

# `a.b.example.com` would also answer on the internal listener, in the scope of its first
# two labels, `a.b`; the cluster-local `a.b.svc.cluster.local` holds that scope.
LOCAL_AB = a_kingress("local", a_rule("a.b.svc.cluster.local", visibility="ClusterLocal"))
PUBLIC_AB = a_kingress("public", a_rule("a.b.example.com"))


def shadowed_hosts(update: Any) -> dict[str, tuple[str, ...]]:
    return {
        k.name: v.internal_shadowed for k, v in update.state.ingresses.items() if k.name != "other"
    }


@pytest.mark.parametrize(
    "local_first", [True, False], ids=["cluster-local-first", "external-first"]
)
def test_an_external_host_is_shadowed_inside_by_a_cluster_local_scope_until_it_goes(
    local_first: bool,
) -> None:
    first, second = (LOCAL_AB, PUBLIC_AB) if local_first else (PUBLIC_AB, LOCAL_AB)
    resolver, update = resolve([*base_world(), first])
    assert set(shadowed_hosts(update).values()) == {()}
    update = resolver.apply(changes(second))
    assert resolver.problems() == ()
    assert shadowed_hosts(update) == {"local": (), "public": ("a.b.example.com",)}
    assert update.state.ingresses[key("public")] == served(
        PUBLIC_AB, (ext("a.b.example.com"),), (svc(),), shadowed=("a.b.example.com",)
    )

    update = resolver.apply(deleted(LOCAL_AB))
    assert update.changed_ingresses == {key("local"), key("public")}
    assert shadowed_hosts(update) == {"public": ()}


@pytest.mark.parametrize(
    ("local_name", "public_name"),
    [("a", "z"), ("z", "a")],
    ids=["local-sorts-first", "public-sorts-first"],
)
def test_shadowing_in_one_batch_does_not_depend_on_name_order(
    local_name: str, public_name: str
) -> None:
    local = a_kingress(local_name, a_rule("a.b.svc.cluster.local", visibility="ClusterLocal"))
    public = a_kingress(public_name, a_rule("a.b.example.com"))
    resolver, update = resolve([*base_world(), local, public])
    assert resolver.problems() == ()
    assert shadowed_hosts(update) == {local_name: (), public_name: ("a.b.example.com",)}


def test_a_kingress_holding_both_forms_of_its_scope_is_not_shadowed() -> None:
    # What Knative writes for a Route: its public host and its cluster-local name.
    kingress = a_kingress("hello", a_rule(), a_local_rule())
    resolver, update = resolve([*base_world(), kingress])
    assert resolver.problems() == ()
    assert update.state.ingresses[key("hello")].internal_shadowed == ()
