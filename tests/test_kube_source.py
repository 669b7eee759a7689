"""The Kubernetes source against a fake API server that speaks the real list/watch protocol.

Every wait is on a condition (what the sink received, what the server saw)
under `asyncio.timeout`, never a sleep; backoff delays are shrunk to
milliseconds so each test takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from envoy.config.endpoint.v3 import endpoint_pb2

from knative_xds.cache import SnapshotCache
from knative_xds.model import ObjectKey, Resolver
from knative_xds.model.kinds import NETWORKING, SERVING
from knative_xds.pipeline import Pipeline
from knative_xds.resources import CLUSTER, ENDPOINT
from knative_xds.sources import kube_watch
from knative_xds.sources.kube import ClusterConfigError, KubeSource, collections, connect
from knative_xds.sources.kube_watch import Backoff, WatchOptions
from knative_xds.translate import GatewayConfig, Translator
from tests.fake_kube_api import FakeApiServer
from tests.kingress_fixtures import a_secret
from tests.kube_fixtures import (
    DEADLINE,
    FAST,
    RecordingSink,
    a_cluster,
    a_config_map,
    a_kingress_cluster,
    a_plain_slice,
    a_revision,
    a_route,
    a_slice,
    an_ingress,
    ingress_key,
    route_key,
    running,
    synced,
    watching,
)

# -- the fake API server ---------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    await fake.start()
    yield fake
    await fake.close()


# -- the first complete state ----------------------------------------------------------


async def test_first_state_waits_for_every_list_then_holds_everything(
    server: FakeApiServer,
) -> None:
    a_cluster(server)
    held = server.hold("list", "config-network")
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await held.arrived.wait()
        await server.wait_for(lambda: len(server.requests("watch")) == 8)
        server.put(a_route("late"))  # reaches the source through a watch, before the gate opens
        assert sink.calls == [] and not ready.is_set()

        held.release()
        await ready.wait()
        await sink.until(lambda: route_key("late") in sink.state())

    assert sink.calls[0][0] == "load", "nothing may be submitted before the first state"
    first = sink.calls[0][1]
    assert {kind for kind, _ in first} == {"Route", "Revision", "EndpointSlice", "ConfigMap"}
    assert ("ConfigMap", ObjectKey("knative-serving", "config-network")) in first
    assert all(raw is not None and raw.origin == "kubernetes" for raw in first.values())


async def test_a_list_is_read_in_pages(server: FakeApiServer) -> None:
    for i in range(5):
        server.put(a_route(f"r{i}"))
    sink = RecordingSink()
    paged = WatchOptions(backoff=FAST.backoff, page_size=2)
    async with watching(server, sink, options=paged) as ready:
        await ready.wait()
    pages = server.requests("list", "/routes")
    assert [p.query.get("continue") for p in pages] == [None, "2", "4"]
    assert all(p.query["limit"] == "2" for p in pages)
    assert {route_key(f"r{i}") for i in range(5)} <= sink.calls[0][1].keys()


# -- watch events ----------------------------------------------------------------------


async def test_watch_events_add_modify_and_delete(server: FakeApiServer) -> None:
    a_cluster(server)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)

        server.put(a_route("second"))
        await sink.until(lambda: route_key("second") in sink.state())
        server.put(a_route("second", revision="hello-00002"))
        await sink.until(
            lambda: (
                sink.state()[route_key("second")].body["spec"]["traffic"][0]["revisionName"]
                == "hello-00002"
            )
        )
        server.delete(SERVING, "Route", "default", "second")
        await sink.until(lambda: route_key("second") not in sink.state())

    assert sink.submitted == [
        {route_key("second"): sink.submitted[0][route_key("second")]},
        {route_key("second"): sink.submitted[1][route_key("second")]},
        {route_key("second"): None},
    ]


async def test_a_change_to_fields_the_model_ignores_is_not_passed_on(server: FakeApiServer) -> None:
    a_cluster(server)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        server.put(a_revision(replicas=3))  # only status.actualReplicas changes
        server.put(a_revision(ready=False))  # events arrive in order: this one comes after
        revision = ("Revision", ObjectKey("default", "hello-00001"))
        await sink.until(lambda: sink.submitted)

    assert sink.submitted == [{revision: sink.submitted[0][revision]}]
    assert sink.state()[revision].body["status"]["conditions"][0]["status"] == "False"


async def test_a_bookmark_moves_the_version_a_watch_resumes_from(server: FakeApiServer) -> None:
    a_cluster(server)
    listed_at = server.version
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        version = server.bookmark()
        server.drop_watches()
        await server.wait_for(lambda: len(server.requests("watch", "/routes")) == 2)

    first, second = server.requests("watch", "/routes")
    assert first.query["resourceVersion"] == str(listed_at)
    assert second.query["resourceVersion"] == str(version)
    assert len(server.requests("list", "/routes")) == 1, (
        "a dropped watch resumes; it does not list again"
    )


# -- expiry: 410 Gone --------------------------------------------------------------------


async def test_after_410_a_relist_reports_what_changed_in_the_gap_including_deletions(
    server: FakeApiServer,
) -> None:
    a_cluster(server)
    server.put(a_route("doomed"))
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        held = server.hold("watch", "/routes")
        server.drop_watches()  # the connection goes away ...
        await held.arrived.wait()  # ... and while the route watch is away:
        server.delete(SERVING, "Route", "default", "doomed")
        server.put(a_route("born"))
        server.compact()  # the versions in between are gone: resuming gets 410
        held.release()
        await sink.until(lambda: route_key("born") in sink.state())

    lists = server.requests("list", "/routes")
    assert len(lists) == 2
    assert sink.submitted[-1] == {
        route_key("doomed"): None,
        route_key("born"): sink.state()[route_key("born")],
    }
    assert route_key("hello") in sink.state(), "unchanged objects stay, and are not sent again"


async def test_a_relist_read_and_diffed_in_steps_reports_the_gap_exactly_once(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps of 2 objects: the loop runs other tasks within a list page and within the
    # diff; what is reported is still the gap, once, and the watch resumes from the
    # new list's version.
    monkeypatch.setattr(kube_watch, "DIFF_STEP", 2)
    a_cluster(server)
    for i in range(7):
        server.put(a_route(f"r{i}"))
    sink = RecordingSink()
    paged = WatchOptions(backoff=FAST.backoff, page_size=3)
    async with watching(server, sink, options=paged) as ready:
        await synced(server, ready)
        held = server.hold("watch", "/routes")
        server.drop_watches()
        await held.arrived.wait()
        server.delete(SERVING, "Route", "default", "r1")
        server.put(a_route("r4", revision="hello-00002"))
        server.put(a_route("r9"))
        server.compact()
        listed_at = server.version
        held.release()
        await sink.until(lambda: route_key("r9") in sink.state())
        server.put(a_route("after"))
        await sink.until(lambda: route_key("after") in sink.state())

    assert sink.submitted[0] == {
        route_key("r1"): None,
        route_key("r4"): sink.state()[route_key("r4")],
        route_key("r9"): sink.state()[route_key("r9")],
    }
    assert sink.state()[route_key("r4")].body["spec"]["traffic"][0]["revisionName"] == (
        "hello-00002"
    )
    watches = server.requests("watch", "/routes")
    assert watches[-1].query["resourceVersion"] == str(listed_at), (
        "the watch resumes from the new list's version"
    )


async def test_an_error_410_event_on_an_open_watch_leads_to_a_relist(server: FakeApiServer) -> None:
    a_cluster(server)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        server.compact()
        server.expire_watches()
        await server.wait_for(lambda: len(server.requests("list", "/routes")) == 2)
        server.put(a_route("after"))
        await sink.until(lambda: route_key("after") in sink.state())
    assert sink.submitted == [{route_key("after"): sink.state()[route_key("after")]}], (
        "a relist with no change sends nothing"
    )


async def test_410_again_right_after_a_relist_backs_off(server: FakeApiServer) -> None:
    a_cluster(server)
    sink = RecordingSink()
    server.fail("watch", "/routes", 410, times=3)  # an HTTP 410, not an ERROR event
    async with watching(server, sink) as ready:
        await synced(server, ready)
        await server.wait_for(lambda: len(server.requests("watch", "/routes")) == 4)

    lists = [s.at for s in server.requests("list", "/routes")]
    watches = [s.at for s in server.requests("watch", "/routes")]
    assert len(lists) == 4, "every 410 leads to a relist"
    assert lists[2] - watches[1] >= FAST.backoff.delay(0, 0.0)
    assert lists[3] - watches[2] >= FAST.backoff.delay(1, 0.0)


# -- API errors ------------------------------------------------------------------------


async def test_list_errors_back_off_then_recover_and_clear_the_problem(
    server: FakeApiServer,
) -> None:
    a_cluster(server)
    server.fail("list", "/revisions", 500, times=3)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await ready.wait()

    tries = [s.at for s in server.requests("list", "/revisions")]
    assert len(tries) == 4
    for attempt, (before, after) in enumerate(itertools.pairwise(tries)):
        assert after - before >= FAST.backoff.delay(attempt, 0.0), (
            f"retry {attempt + 1} came too soon"
        )
    revisions = [problems for scope, problems in sink.problem_log if "revisions" in scope]
    assert len(revisions[0]) == 1 and "500" in revisions[0][0].message
    assert revisions[-1] == [], "the problem is cleared once the list works"
    assert ("Revision", ObjectKey("default", "hello-00001")) in sink.calls[0][1]


async def test_watch_errors_back_off_and_resume_without_a_relist(server: FakeApiServer) -> None:
    a_cluster(server)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        server.fail("watch", "/routes", 503, times=2)
        server.drop_watches()
        await server.wait_for(lambda: len(server.requests("watch", "/routes")) == 4)
        server.put(a_route("meanwhile"))
        await sink.until(lambda: route_key("meanwhile") in sink.state())

    assert len(server.requests("list", "/routes")) == 1, (
        "a failed watch resumes; it does not list again"
    )
    versions = {s.query["resourceVersion"] for s in server.requests("watch", "/routes")}
    assert len(versions) == 1
    routes = [problems for scope, problems in sink.problem_log if "routes" in scope]
    assert [len(p) for p in routes] == [1, 0], "reported once while failing, cleared once working"
    assert "503" in routes[0][0].message


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    assert [backoff.delay(n, 0.999999) for n in range(6)] == pytest.approx(
        [1, 2, 4, 8, 8, 8], rel=1e-5
    )
    assert [backoff.delay(n, 0.0) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert backoff.delay(10_000, 0.5) == 6.0


# -- selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("follow_public", "service_type"),
    [(False, "!=Public"), (True, "=Public")],
    ids=["private", "public"],
)
async def test_every_request_is_narrowed_by_selectors(
    server: FakeApiServer, follow_public: bool, service_type: str
) -> None:
    a_cluster(server)
    server.put(a_slice(service_type="Public", address="10.0.0.9", suffix="pub"))
    unrelated = a_slice(address="10.9.9.9", suffix="other")
    del unrelated["metadata"]["labels"]["serving.knative.dev/revision"]
    server.put(unrelated)
    server.put(a_config_map("config-features", {"x": "y"}))
    sink = RecordingSink()
    async with watching(server, sink, follow_public_endpoints=follow_public) as ready:
        await synced(server, ready)

    revision_slices = (
        f"serving.knative.dev/revision,networking.internal.knative.dev/serviceType{service_type}"
    )
    wanted = {
        ("/apis/serving.knative.dev/v1/routes", ()),
        ("/apis/serving.knative.dev/v1/revisions", ()),
        ("/apis/serving.knative.dev/v1/configurations", ()),
        ("/apis/discovery.k8s.io/v1/endpointslices", (("labelSelector", revision_slices),)),
        (
            "/apis/discovery.k8s.io/v1/namespaces/knative-serving/endpointslices",
            (("labelSelector", "kubernetes.io/service-name=activator-service"),),
        ),
        (
            "/api/v1/namespaces/knative-serving/secrets",
            (("fieldSelector", "type=kubernetes.io/tls"),),
        ),
        (
            "/api/v1/namespaces/knative-serving/configmaps",
            (("fieldSelector", "metadata.name=config-domain"),),
        ),
        (
            "/api/v1/namespaces/knative-serving/configmaps",
            (("fieldSelector", "metadata.name=config-network"),),
        ),
        (
            "/api/v1/namespaces/knative-serving/configmaps",
            (("fieldSelector", "metadata.name=config-xds"),),
        ),
    }
    for verb in ("list", "watch"):
        asked = {
            (s.path, tuple((k, v) for k, v in s.query.items() if k.endswith("Selector")))
            for s in server.requests(verb)
        }
        assert asked == wanted, verb
    for watch in server.requests("watch"):
        assert watch.query["allowWatchBookmarks"] == "true" and watch.query["resourceVersion"]

    addresses = {
        raw.body["endpoints"][0]["addresses"][0]
        for (kind, _), raw in sink.state().items()
        if kind == "EndpointSlice"
    }
    assert addresses == {"10.1.0.1", "10.0.0.9" if follow_public else "10.0.0.5"}
    assert ("ConfigMap", ObjectKey("knative-serving", "config-features")) not in sink.state()


# -- input ingress: KIngresses and what they name -------------------------------------


async def test_input_ingress_loads_kingresses_and_their_objects_then_submits_edits(
    server: FakeApiServer,
) -> None:
    a_kingress_cluster(server)
    server.put(a_route())  # input ingress does not read Routes: Knative made a KIngress of it
    ready = asyncio.Event()
    sink = RecordingSink(ready)
    async with watching(server, sink, ready=ready, input="ingress") as ready:
        await synced(server, ready, watches=len(collections(input="ingress")))
        assert sink.verbs == ["load"] and sink.ready_before_load == [False]
        first = sink.calls[0][1]
        assert {kind for kind, _ in first} == {"Ingress", "Service", "EndpointSlice", "ConfigMap"}
        assert first[ingress_key()].body["metadata"]["annotations"] == {
            "networking.knative.dev/ingress.class": "xds.ingress.networking.knative.dev"
        }
        assert "status" not in first[ingress_key()].body

        server.put(an_ingress(host="hi.default.example.com"))  # the server moves generation
        await sink.until(lambda: sink.submitted)

    assert sink.verbs == ["load", "submit"]
    (edited,) = sink.submitted[0].values()
    assert edited.body["metadata"]["generation"] == 2
    assert edited.body["spec"]["rules"][0]["hosts"] == ["hi.default.example.com"]


_INGRESS = "/apis/networking.internal.knative.dev/v1alpha1/ingresses"
_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
_SERVICE_TYPE = "networking.internal.knative.dev/serviceType"
_CONFIG_MAPS = {
    (
        "/api/v1/namespaces/knative-serving/configmaps",
        (("fieldSelector", f"metadata.name={name}"),),
    )
    for name in ("config-domain", "config-network", "config-xds")
}


@pytest.mark.parametrize(
    ("follow_public", "slice_selectors", "addresses"),
    [
        (False, [f"{_SERVICE_TYPE}!=Public"], {"10.0.0.5", "10.2.0.7", "10.1.0.1"}),
        (
            True,
            [f"{_SERVICE_TYPE}=Public", f"!{_SERVICE_TYPE}"],
            {"10.0.0.9", "10.2.0.7", "10.1.0.1"},
        ),
    ],
    ids=["private", "public"],
)
async def test_input_ingress_asks_for_kingresses_services_tls_secrets_and_their_slices(
    server: FakeApiServer, follow_public: bool, slice_selectors: list[str], addresses: set[str]
) -> None:
    a_kingress_cluster(server)  # the private slice 10.0.0.5 and the activator's 10.1.0.1
    server.put(a_slice(service_type="Public", address="10.0.0.9", suffix="pub"))
    server.put(a_plain_slice("backend", address="10.2.0.7"))
    server.put(a_config_map("config-features", {"x": "y"}))
    sink = RecordingSink()
    kwargs = {"input": "ingress", "follow_public_endpoints": follow_public}
    async with watching(server, sink, **kwargs) as ready:
        await synced(server, ready, watches=len(collections(**kwargs)))

    wanted = {
        (_INGRESS, ()),
        ("/api/v1/services", ()),
        ("/api/v1/secrets", (("fieldSelector", "type=kubernetes.io/tls"),)),
        *((_SLICES, (("labelSelector", selector),)) for selector in slice_selectors),
        *_CONFIG_MAPS,
    }
    for verb in ("list", "watch"):
        asked = [
            (s.path, tuple((k, v) for k, v in s.query.items() if k.endswith("Selector")))
            for s in server.requests(verb)
        ]
        # Each asked for once, and no watch of the activator's slices of its own: they
        # come with the unlabelled slices (10.1.0.1 below), and would come twice.
        assert sorted(asked) == sorted(wanted), verb
    slices = [raw for (kind, _), raw in sink.state().items() if kind == "EndpointSlice"]
    assert {raw.body["endpoints"][0]["addresses"][0] for raw in slices} == addresses


async def test_input_routes_reads_the_tls_secrets_of_knative_serving_alone(
    server: FakeApiServer,
) -> None:
    """config-xds's cluster-cert-secret is served with Routes as input too: the TLS
    Secrets of knative-serving come in, no other Secret does."""
    a_cluster(server)
    server.put(a_secret("cluster-certs", ns="knative-serving"))
    server.put(a_secret("hello-tls", ns="default"))
    opaque = a_secret("not-tls", ns="knative-serving")
    opaque["type"] = "Opaque"
    server.put(opaque)
    sink = RecordingSink()
    async with watching(server, sink) as ready:
        await synced(server, ready)
        secrets = sorted(str(key) for (kind, key) in sink.state() if kind == "Secret")
        assert secrets == ["knative-serving/cluster-certs"]
        server.put(a_secret("rotated", ns="knative-serving"))
        await sink.until(
            lambda: any(str(key) == "knative-serving/rotated" for _, key in sink.state())
        )


def test_input_routes_is_what_was_read_before_kingresses() -> None:
    kinds = [(c.kind, c.api_version) for c in collections(input="routes")]
    assert kinds == [
        ("Route", SERVING),
        ("Revision", SERVING),
        ("Configuration", SERVING),
        ("EndpointSlice", "discovery.k8s.io/v1"),
        ("EndpointSlice", "discovery.k8s.io/v1"),
        ("Secret", "v1"),
        ("ConfigMap", "v1"),
        ("ConfigMap", "v1"),
        ("ConfigMap", "v1"),
    ]
    assert collections() == collections(input="ingress"), "ingress is the default"
    with pytest.raises(ValueError, match="'kingress' is not a valid Input"):
        collections(input="kingress")


# -- configuration and the real pipeline ---------------------------------------------------


def a_kubeconfig(folder: Path, url: str, *, token: str = "t") -> Path:
    """A kubeconfig naming the fake API server, with a bearer token."""
    path = folder / "config"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def test_connect_uses_the_kubeconfig_and_its_token(
    server: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig = a_kubeconfig(tmp_path, server.url, token="s3cret")
    a_cluster(server)
    sink = RecordingSink()
    async with connect(kubeconfig=str(kubeconfig)) as api:
        source = KubeSource(api, options=FAST)
        async with running(source, sink) as ready, asyncio.timeout(DEADLINE):
            await ready.wait()
    assert {s.authorization for s in server.seen} == {"Bearer s3cret"}


async def test_connect_without_any_configuration_says_so(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="no Kubernetes configuration"):
        async with connect(kubeconfig=str(tmp_path / "missing")):
            pass


def _endpoints(cache: SnapshotCache, name: str) -> list[str]:
    snapshot = cache.current()
    assert snapshot is not None
    assignment = snapshot.of(ENDPOINT)[name].message(endpoint_pb2.ClusterLoadAssignment)
    return [
        e.endpoint.address.socket_address.address
        for group in assignment.endpoints
        for e in group.lb_endpoints
    ]


async def test_the_source_feeds_the_real_pipeline(server: FakeApiServer) -> None:
    a_cluster(server)
    cache = SnapshotCache()
    pipeline = Pipeline(resolver=Resolver(), translator=Translator(GatewayConfig()), cache=cache)
    published = asyncio.Event()
    cache.watch(published)
    async with watching(server, pipeline) as ready:
        applier = asyncio.create_task(pipeline.run())
        try:
            await ready.wait()
            snapshot = cache.current()
            assert snapshot is not None and "default/hello-00001" in snapshot.of(CLUSTER)
            assert _endpoints(cache, "default/hello-00001") == ["10.0.0.5"]

            # The revision's pods go away: its traffic goes through the activator.
            published.clear()
            server.put(a_slice(ready=False))
            while _endpoints(cache, "default/hello-00001") != ["10.1.0.1"]:
                await published.wait()
                published.clear()
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier
    assert pipeline.problems() == []


async def test_serve_kubernetes_reports_kingress_status_with_the_gateways_it_is_told(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --kubernetes` as the CLI runs it starts the status reporter: with no gateway
    connected, the KIngress is told so, on its generation."""
    from knative_xds import cli

    kubeconfig = a_kubeconfig(tmp_path, server.url)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    a_kingress_cluster(server)
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--kubernetes",
            "--xds-address",
            "127.0.0.1",
            "--xds-port",
            "0",
            "--listen-address",
            "127.0.0.1",
            "--lease-namespace",
            "ops",
        ]
    )
    serving = asyncio.create_task(cli._serve(args))

    def told() -> dict | None:
        status = server.stored(NETWORKING, "Ingress", "default", "hello").get("status") or {}
        ready = [c for c in status.get("conditions") or () if c["type"] == "Ready"]
        return status if ready and ready[0].get("reason") == "NoGatewayConnected" else None

    try:
        async with asyncio.timeout(DEADLINE):
            await server.wait_for(lambda: told() is not None)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    assert told()["observedGeneration"] == 1  # type: ignore[index]
    # The one writer holds its Lease where it was told.
    assert any("/apis/coordination.k8s.io/v1/namespaces/ops/leases" in s.path for s in server.seen)
