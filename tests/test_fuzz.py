"""Property tests: hostile input through the YAML parser, the resolver and the translator.

Whatever a file holds (wrong types, huge and unicode strings, out-of-range
percents, thousands of tags, duplicates, alias bombs, bytes that are not
UTF-8), the pipeline never raises; every rejection names the file, the object
and the field; a valid Route in another file keeps being served; and what the
resolver accepts, Envoy accepts (`envoy --mode validate` on a static
bootstrap holding the translated resources).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import json_format
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from knative_xds import synth
from knative_xds.envoy import require_envoy
from knative_xds.model import ObjectKey, Resolver
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE
from knative_xds.sources.file import parse_documents
from knative_xds.translate import GatewayConfig, Translator
from tests.helpers import apply_delta

FUZZ_FILE = Path("fuzz.yaml")
GOOD_FILE = Path("good.yaml")
GOOD = ObjectKey("fixed", "good")
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ------------------------------------------------------------------------

label = st.from_regex(r"\A[a-z][a-z0-9-]{0,8}[a-z0-9]\Z")
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "web\r\nx", "my ns/../x", "UPPER", "-x-", "a" * 64, "é", "*"]),
    st.text(alphabet="ab.-", min_size=1, max_size=300),
)
name = st.one_of(label, label, hostile_text).filter(lambda n: n != "good")
namespace = st.one_of(st.sampled_from(["default", "other"]), hostile_text).filter(
    lambda n: n != "fixed"
)
anything = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)
    ),
    max_leaves=8,
)
percent = st.one_of(
    st.integers(0, 100), st.integers(-(10**20), 10**20), st.sampled_from([-1, 101, 2**63])
)
revisions = st.sampled_from(["rev-1", "rev-2", "missing"])


@st.composite
def target(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(anything)
    t: dict[str, Any] = {"revisionName": draw(st.one_of(revisions, revisions, hostile_text))}
    if draw(st.booleans()):
        t["percent"] = draw(percent)
    if draw(st.booleans()):
        t["tag"] = draw(st.one_of(label, hostile_text))
    if draw(st.integers(0, 4)) == 0:
        t[draw(st.sampled_from(["configurationName", "latestRevision", "percent"]))] = draw(
            anything
        )
    return t


@st.composite
def route(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 14)) == 0:  # thousands of tags, all at 0 percent but one
        traffic: Any = [synth.target("rev-1", 100)] + [
            synth.target("rev-1", 0, tag=f"t{i}") for i in range(draw(st.integers(500, 2000)))
        ]
    else:
        traffic = draw(st.one_of(st.lists(target(), max_size=5), anything))
    body = synth.route(draw(name), [], namespace=draw(namespace))
    body["spec"]["traffic"] = traffic
    return body


@st.composite
def endpoint_slice(draw: st.DrawFn) -> dict[str, Any]:
    addresses = draw(
        st.lists(
            st.one_of(
                st.ip_addresses().map(str),
                st.sampled_from(["not-an-ip", "999.1.1.1", "10.0.0.01", ""]),
                hostile_text,
            ),
            max_size=4,
        )
    )
    body = synth.endpoint_slice(draw(revisions), [], 8012, namespace="default")
    body["endpoints"] = [{"addresses": [a]} for a in addresses]
    if draw(st.integers(0, 5)) == 0:
        body["ports"] = draw(anything)
    return body


templates = st.one_of(
    st.sampled_from(
        [
            "{{.Name}}.{{.Namespace}}.{{.Domain}}",
            "{{.Name}}-{{.Namespace}}.{{.Domain}}",
            "",
            "static.example.com",
            "{{.Name | lower}}.{{.Domain}}",
            "{{.Tag}}-{{.Name}}",
            "{{.Name}}{{.Tag}}",
            "{{.Other}}",
        ]
    ),
    hostile_text,
)


@st.composite
def config_map(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        data = {
            "domain-template": draw(templates),
            "tag-template": draw(templates),
            "tag-header-based-routing": draw(st.sampled_from(["enabled", "x", ""])),
        }
        return synth.config_map("config-network", data)
    selector = draw(
        st.one_of(
            st.just(""),
            st.just("selector:\n  app: prod\n"),
            st.just(
                "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
                + "".join(
                    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n"
                    for i in range(9)
                )
            ),
            st.just("selector:\n" + "".join(" " * i + "a:\n" for i in range(3000))),
            hostile_text,
        )
    )
    return synth.config_map("config-domain", {draw(st.one_of(label, hostile_text)): selector})


def world_objects() -> list[dict[str, Any]]:
    return [
        synth.revision("rev-1", ready=True),
        synth.revision("rev-2", ready=True),
        synth.endpoint_slice("rev-1", ["10.0.0.1"], 8012),
    ]


hostile_object = st.one_of(route(), route(), endpoint_slice(), config_map(), anything)


@st.composite
def hostile_file(draw: st.DrawFn) -> str | bytes:
    """A file: dumped objects (sometimes a duplicate), or raw text or bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(st.text(max_size=200))
    objs = draw(st.lists(hostile_object, min_size=1, max_size=6))
    if objs and draw(st.booleans()):
        objs.append(objs[0])  # a duplicate in one file
    return yaml.safe_dump_all([*world_objects(), *objs], allow_unicode=True)


# -- the pipeline --------------------------------------------------------------------------


def good_file() -> str:
    return yaml.safe_dump_all(
        [
            synth.revision("good-1", namespace="fixed", ready=True),
            synth.route("good", [synth.target("good-1", 100)], namespace="fixed"),
        ]
    )


def run_pipeline(fuzz: str | bytes) -> tuple[Resolver, dict[str, dict[str, Any]], list[Any]]:
    """The file parse, the resolver and the translator, as the server runs them."""
    resolver = Resolver()
    translator = Translator(GatewayConfig(listen_address="127.0.0.1"))
    resources: dict[str, dict[str, Any]] = {}
    problems: list[Any] = []
    changes: dict[Any, Any] = {}
    for path, text in ((GOOD_FILE, good_file()), (FUZZ_FILE, fuzz)):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                continue  # the file source reports it as unreadable
        parsed = parse_documents(path, text)
        problems += parsed.problems
        for ident, raw in parsed.objects.items():
            changes.setdefault(ident, raw)  # the first file to define a name owns it
    update = resolver.apply(changes)
    apply_delta(resources, translator.translate(update))
    return resolver, resources, [*problems, *update.problems]


def check_invariants(resolver: Resolver, problems: list[Any]) -> None:
    for p in problems:
        assert p.origin in (str(FUZZ_FILE), str(GOOD_FILE)), p
        if p.kind == "file":
            continue  # the file itself, or a document with no kind or name
        assert p.kind and p.key and p.field, p  # an unexpected error would have no field
    # The valid Route in the other file keeps serving, unless a template gave it a host
    # that an earlier-sorting Route holds (a reported conflict on `hosts`).
    lost = any(p.key == str(GOOD) and p.field == "hosts" for p in problems)
    assert lost or GOOD in resolver.state.ingresses, problems


@SETTINGS
@given(hostile_file())
def test_the_pipeline_never_raises_and_names_every_rejection(fuzz: str | bytes) -> None:
    resolver, _, problems = run_pipeline(fuzz)
    check_invariants(resolver, problems)


@settings(max_examples=40, deadline=None)
@given(st.lists(hostile_object, min_size=1, max_size=4))
def test_an_edit_never_raises_either(objs: list[Any]) -> None:
    """Hostile objects arriving one edit at a time, over a state that is serving."""
    resolver = Resolver()
    translator = Translator(GatewayConfig(listen_address="127.0.0.1"))
    translator.translate(resolver.apply(parse_documents(GOOD_FILE, good_file()).objects))
    for obj in objs:
        parsed = parse_documents(FUZZ_FILE, yaml.safe_dump(obj, allow_unicode=True))
        update = resolver.apply(parsed.objects)
        translator.translate(update)
        check_invariants(resolver, [*parsed.problems, *update.problems])


# -- what the resolver accepts, Envoy accepts ---------------------------------------------


def static_bootstrap(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The translated resources as one static bootstrap: EDS clusters become STATIC with
    their endpoints inline, and each listener's scopes carry their route table inline,
    so Envoy checks every resource (and that every route names a cluster it has)."""
    loads = {
        n: r.message(endpoint_pb2.ClusterLoadAssignment)
        for n, r in resources.get(ENDPOINT, {}).items()
    }
    tables = {
        n: r.message(route_pb2.RouteConfiguration) for n, r in resources.get(ROUTE, {}).items()
    }
    boot = bootstrap_pb2.Bootstrap()
    for name, r in sorted(resources.get(CLUSTER, {}).items()):
        cluster = r.message(cluster_pb2.Cluster)
        if cluster.HasField("eds_cluster_config"):
            service = cluster.eds_cluster_config.service_name or name
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.load_assignment.CopyFrom(
                loads.get(service, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
            )
        boot.static_resources.clusters.append(cluster)
    scopes: dict[str, list[scoped_route_pb2.ScopedRouteConfiguration]] = {}
    inlined: set[str] = set()
    for name, r in sorted(resources.get(SCOPED_ROUTE, {}).items()):
        scope = r.message(scoped_route_pb2.ScopedRouteConfiguration)
        table = tables.get(scope.route_configuration_name)
        assert table is not None, f"scope {name} names a missing table"
        # One scope per table: a Route with a thousand tag hosts has a thousand scopes
        # naming its one table, and inlining it into each would cost gigabytes.
        if scope.route_configuration_name in inlined:
            continue
        inlined.add(scope.route_configuration_name)
        scope.ClearField("route_configuration_name")
        scope.route_configuration.CopyFrom(table)
        scopes.setdefault(name.split("/", 1)[0], []).append(scope)
    for r in resources.get(LISTENER, {}).values():
        listener = r.message(listener_pb2.Listener)
        for chain in listener.filter_chains:
            for f in chain.filters:
                manager = hcm.HttpConnectionManager()
                if not f.typed_config.Unpack(manager) or not manager.HasField("scoped_routes"):
                    continue
                routes = manager.scoped_routes
                routes.ClearField("scoped_rds")
                routes.ClearField("rds_config_source")
                routes.scoped_route_configurations_list.scoped_route_configurations.extend(
                    scopes.get(routes.name, [])
                )
                f.typed_config.Pack(manager)
        boot.static_resources.listeners.append(listener)
    return json_format.MessageToDict(boot)


@pytest.fixture(scope="module")
def envoy_binary() -> Path:
    return require_envoy()


def envoy_validates(binary: Path, config: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess:
    path = tmp / "bootstrap.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_envoy_refuses_what_validation_now_refuses(envoy_binary: Path, tmp_path: Path) -> None:
    """The check can fail: an address the resolver would refuse, slipped past it, is
    refused by Envoy in this bootstrap."""
    _, resources, _ = run_pipeline("")
    config = static_bootstrap(resources)
    config["staticResources"]["clusters"][0]["loadAssignment"] = {
        "clusterName": "x",
        "endpoints": [
            {
                "lbEndpoints": [
                    {
                        "endpoint": {
                            "address": {"socketAddress": {"address": "999.1.1.1", "portValue": 80}}
                        }
                    }
                ]
            }
        ],
    }
    assert envoy_validates(envoy_binary, config, tmp_path).returncode != 0


@st.composite
def plausible_route(draw: st.DrawFn) -> dict[str, Any]:
    """A Route that may well be accepted: what Envoy gets to check."""
    first = draw(st.integers(0, 100))
    traffic = [synth.target("rev-1", first), synth.target("rev-2", 100 - first)]
    for i, tag in enumerate(draw(st.lists(label, max_size=3, unique=True))):
        traffic[i % 2]["tag"] = tag if i < 2 else traffic[i % 2].get("tag", tag)
    return synth.route(draw(label.filter(lambda n: n != "good")), traffic, namespace="default")


@st.composite
def plausible_file(draw: st.DrawFn) -> str:
    objs: list[Any] = draw(st.lists(plausible_route(), min_size=1, max_size=4))
    addresses = draw(st.lists(st.ip_addresses().map(str), min_size=1, max_size=3))
    objs.append(synth.endpoint_slice("rev-2", addresses, draw(st.integers(1, 65535))))
    template = draw(st.sampled_from(["{{.Name}}-{{.Namespace}}.{{.Domain}}", "{{.Name}}.x.dev"]))
    objs.append(synth.config_map("config-network", {"domain-template": template}))
    objs.append(draw(hostile_object))
    return yaml.safe_dump_all([*world_objects(), *objs], allow_unicode=True)


# No shrinking: each step runs Envoy, and a failure prints its whole example anyway.
@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(plausible_file(), plausible_file(), hostile_file()))
def test_what_validation_accepts_envoy_accepts(
    envoy_binary: Path, tmp_path_factory: pytest.TempPathFactory, fuzz: str | bytes
) -> None:
    resolver, resources, _ = run_pipeline(fuzz)
    assert GOOD in resolver.state.ingresses
    done = envoy_validates(envoy_binary, static_bootstrap(resources), tmp_path_factory.mktemp("v"))
    assert done.returncode == 0, f"{fuzz!r}\n{done.stdout}{done.stderr}"
