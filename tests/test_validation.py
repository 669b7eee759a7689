"""Knative-style validation: names, hosts, templates and addresses that Envoy or routing
would break on are Problems naming file, object and field, and the rest keeps serving.

Each row is an input that `validate` once passed although it re-hosted every Route
or made Envoy reject a whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.model import ObjectKey, Resolver, yamltext
from knative_xds.model import resolve as resolve_module
from knative_xds.model.kinds import ROUTE
from tests.helpers import changes, resolve, with_metadata
from tests.kingress_fixtures import a_kingress, a_rule

ORIGIN = "test.yaml"
OTHER = ObjectKey("default", "other")
HELLO = ObjectKey("default", "hello")


def world() -> list[dict[str, Any]]:
    """A Route `other` that must keep serving whatever a row adds beside it."""
    return [
        synth.revision("hello-1", ready=True),
        synth.route("other", [synth.target("hello-1", 100)]),
    ]


def hello() -> dict[str, Any]:
    return synth.route("hello", [synth.target("hello-1", 100)])


def external_hosts(resolver: Resolver, key: ObjectKey) -> set[str]:
    ingress = resolver.state.ingresses[key]
    return {h for r in ingress.rules if r.visibility.name == "EXTERNAL" for h in r.hosts}


@dataclass(frozen=True)
class Bad:
    objects: list[dict[str, Any]]
    kind: str
    key: str
    field: str
    says: str  # a word the message must hold
    # Where Route `other` is served: a refused template or domain leaves the default.
    other_host: str = "other.default.example.com"


NET = "knative-serving/config-network"
DOM = "knative-serving/config-domain"


def network(**data: str) -> dict[str, Any]:
    return synth.config_map("config-network", data)


def domains(**data: str) -> dict[str, Any]:
    return synth.config_map("config-domain", data)


def slice_with(address: str) -> dict[str, Any]:
    return synth.endpoint_slice("hello-1", [address], 8012)


CASES = {
    "empty-domain-template": Bad(
        [network(**{"domain-template": ""})], "ConfigMap", NET, "data.domain-template", "empty"
    ),
    "constant-domain-template": Bad(
        [network(**{"domain-template": "static.example.com"})],
        "ConfigMap",
        NET,
        "data.domain-template",
        "same host",
    ),
    "go-pipes": Bad(
        [network(**{"domain-template": "{{.Name | lower}}.{{.Namespace}}.{{.Domain}}"})],
        "ConfigMap",
        NET,
        "data.domain-template",
        "pipes",
    ),
    "empty-tag-template": Bad(
        [network(**{"tag-template": ""})], "ConfigMap", NET, "data.tag-template", "empty"
    ),
    "domain-with-space-and-two-dots": Bad(
        [domains(**{"ex ample..com": ""})], "ConfigMap", DOM, "data.ex ample..com", "DNS"
    ),
    "64-character-label": Bad(
        [domains(**{"a" * 64 + ".com": ""})], "ConfigMap", DOM, f"data.{'a' * 64}.com", "63"
    ),
    "1-mb-domain": Bad(
        [domains(**{"a." * 500_000 + "com": ""})], "ConfigMap", DOM, "data.a.a.", "253"
    ),
    "address-not-an-ip": Bad(
        [slice_with("not-an-ip")],
        "EndpointSlice",
        "default/hello-1-private-abcde",
        "endpoints[0].addresses[0]",
        "IP",
    ),
    "address-out-of-range": Bad(
        [slice_with("999.1.1.1")],
        "EndpointSlice",
        "default/hello-1-private-abcde",
        "endpoints[0].addresses[0]",
        "IP",
    ),
    "route-name-with-crlf": Bad(
        [with_metadata(hello(), name="web\r\nx")],
        "Route",
        "default/web\r\nx",
        "metadata.name",
        "DNS-1123",
    ),
    "namespace-with-space-and-dots": Bad(
        [with_metadata(hello(), namespace="my ns/../x")],
        "Route",
        "my ns/../x/hello",
        "metadata.namespace",
        "DNS-1123",
    ),
    "revision-name-over-63": Bad(
        [synth.route("hello", [synth.target("r" * 64, 100)])],
        "Route",
        "default/hello",
        "spec.traffic[0].revisionName",
        "63",
    ),
    "host-label-over-63": Bad(
        [
            network(**{"domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}"}),
            synth.route("n" * 40, [synth.target("hello-1", 100)], namespace="s" * 30),
            synth.revision("hello-1", namespace="s" * 30),
        ],
        "Route",
        f"{'s' * 30}/{'n' * 40}",
        "metadata.name",
        "63",
        other_host="other-default.example.com",
    ),
    "selector-nested-3000-deep": Bad(
        [domains(**{"deep.com": "selector:\n" + "".join(" " * i + "a:\n" for i in range(3000))})],
        "ConfigMap",
        DOM,
        "data.deep.com",
        "selector",
    ),
    "selector-alias-bomb": Bad(
        [
            domains(
                **{
                    "bomb.com": "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
                    + "".join(
                        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n"
                        for i in range(9)
                    )
                    + "selector: {app: *j}\n"
                }
            )
        ],
        "ConfigMap",
        DOM,
        "data.bomb.com",
        "aliases",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_a_problem_naming_file_object_and_field(case: Bad) -> None:
    resolver, update = resolve([*world(), *case.objects])
    found = [(p.kind, p.key, p.field) for p in update.problems]
    assert (case.kind, case.key, case.field) in found or any(
        p.kind == case.kind and p.key == case.key and p.field.startswith(case.field)
        for p in update.problems
    ), found
    problem = next(p for p in update.problems if p.kind == case.kind and p.key == case.key)
    assert problem.origin == ORIGIN
    assert case.says in problem.message, problem.message
    # A message quotes what it refuses, but never a megabyte of it.
    assert len(problem.message) < 1000
    # The Route beside it keeps serving, at its host.
    assert external_hosts(resolver, OTHER) == {case.other_host}


def test_a_refused_template_keeps_the_last_good_one_serving() -> None:
    good = network(**{"domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}"})
    resolver, _ = resolve([*world(), hello(), good])
    assert external_hosts(resolver, HELLO) == {"hello-default.example.com"}
    update = resolver.apply(changes(network(**{"domain-template": "{{.Domain}}"})))
    assert [(p.kind, p.field) for p in update.problems] == [("ConfigMap", "data.domain-template")]
    assert external_hosts(resolver, HELLO) == {"hello-default.example.com"}
    assert external_hosts(resolver, OTHER) == {"other-default.example.com"}


def test_a_refused_domain_keeps_the_last_good_domains() -> None:
    resolver, _ = resolve([*world(), domains(**{"good.dev": ""})])
    assert external_hosts(resolver, OTHER) == {"other.default.good.dev"}
    update = resolver.apply(changes(domains(**{"ex ample..com": ""})))
    assert [p.field for p in update.problems] == ["data.ex ample..com"]
    assert external_hosts(resolver, OTHER) == {"other.default.good.dev"}


def test_valid_addresses_are_served_and_a_bad_one_keeps_the_last_good_slice() -> None:
    resolver, _ = resolve([*world(), hello(), slice_with("10.0.0.7")])
    [endpoints] = [e for k, e in resolver.state.endpoints.items() if "hello-1" in k]
    assert [e.address for e in endpoints] == ["10.0.0.7"]
    resolver.apply(changes(slice_with("999.1.1.1")))
    [endpoints] = [e for k, e in resolver.state.endpoints.items() if "hello-1" in k]
    assert [e.address for e in endpoints] == ["10.0.0.7"]


@pytest.mark.parametrize(
    "host", ["ex ample..com", "a" * 64 + ".com", "bad\r\nhost.com", ""], ids=repr
)
def test_a_kingress_host_must_be_a_dns_name(host: str) -> None:
    resolver, update = resolve([*world(), a_kingress("web", a_rule(host))])
    problems = [p for p in update.problems if p.kind == "Ingress"]
    assert problems and problems[0].field.startswith("spec.rules[0].hosts"), update.problems
    assert OTHER in resolver.state.ingresses


def test_an_unexpected_error_in_one_object_is_its_problem(monkeypatch) -> None:
    def broken(raw: Any) -> Any:
        if raw.key.name == "hello":
            raise RuntimeError("a bug in a parser")
        return real(raw)

    real = resolve_module._PARSERS[ROUTE]
    monkeypatch.setitem(resolve_module._PARSERS, ROUTE, broken)
    resolver, update = resolve([*world(), hello()])
    [problem] = update.problems
    assert (problem.origin, problem.kind, problem.key) == (ORIGIN, "Route", "default/hello")
    assert "RuntimeError" in problem.message
    assert set(resolver.state.ingresses) == {OTHER}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: &a " + "x" * 100_000 + "\nb: [" + ",".join(["*a"] * 200) + "]\n", "aliases"),
        ("- " * 3000 + "1\n", "nested"),
        ("a: " + "x" * (yamltext.MAX_BYTES + 1), "bytes"),
        (b"kind: \xff\xfe", "UTF-8"),
        ("a: [1, 2\n", "line 1"),
    ],
    ids=["string-alias-bomb", "nested-3000", "over-4-mib", "not-utf-8", "unclosed"],
)
def test_the_yaml_parser_refuses_with_one_error(text: str | bytes, says: str) -> None:
    with pytest.raises(yamltext.YamlError) as refused:
        yamltext.documents(text)
    assert says in str(refused.value)


def test_the_yaml_parser_keeps_what_files_use() -> None:
    text = "a: &x {k: v}\nb: *x\nhosts: ['*.example.com']\n---\nkind: List\n"
    assert yamltext.documents(text) == [
        {"a": {"k": "v"}, "b": {"k": "v"}, "hosts": ["*.example.com"]},
        {"kind": "List"},
    ]
    assert yamltext.documents("- 1\n- 2\n") == [[1, 2]]
