"""Requests through the real Envoy reach the right revision, in the right proportions."""

from __future__ import annotations

from knative_xds import synth as s

HELLO = "hello.default.example.com"


async def test_an_80_20_split_lands_within_4_points_over_2000_requests(gateway):
    blue, green = await gateway.app("hello-00001"), await gateway.app("hello-00002")
    await gateway.start(
        [
            s.route("hello", [s.target("hello-00001", 80), s.target("hello-00002", 20)]),
            s.revision("hello-00001"),
            s.revision("hello-00002"),
            s.endpoint_slice("hello-00001", ["127.0.0.1"], blue),
            s.endpoint_slice("hello-00002", ["127.0.0.1"], green, suffix="b"),
        ]
    )
    await gateway.wait_served(HELLO, "hello-00001")

    counts = await gateway.tally(HELLO, 2000)

    assert set(counts) == {"hello-00001", "hello-00002"}, counts
    share = counts["hello-00001"] / 2000 * 100
    assert 76 <= share <= 84, counts


async def test_a_tag_host_reaches_only_its_revision_and_a_zero_percent_target_gets_nothing(gateway):
    ports = {name: await gateway.app(name) for name in ("hello-00001", "hello-00002")}
    await gateway.start(
        [
            s.route(
                "hello",
                [s.target("hello-00001", 100), s.target("hello-00002", 0, tag="candidate")],
            ),
            *(s.revision(name) for name in ports),
            *(s.endpoint_slice(n, ["127.0.0.1"], p, suffix=n[-1]) for n, p in ports.items()),
        ]
    )
    await gateway.wait_served(HELLO, "hello-00001")

    main = await gateway.tally(HELLO, 300)
    tagged = await gateway.tally("candidate-hello.default.example.com", 300)

    assert main == {"hello-00001": 300}
    assert tagged == {"hello-00002": 300}


async def test_a_cluster_local_route_is_404_outside_and_served_inside(gateway):
    port = await gateway.app("api-00001")
    await gateway.start(
        [
            s.route("api", [s.target("api-00001", 100)], cluster_local=True),
            s.revision("api-00001"),
            s.endpoint_slice("api-00001", ["127.0.0.1"], port),
        ]
    )
    await gateway.wait_served("api.default.svc.cluster.local", "api-00001", internal=True)

    outside = await gateway.get("api.default.svc.cluster.local")
    by_short_name = await gateway.get("api.default", internal=True)
    with_port = await gateway.get("api.default.svc:8081", internal=True)

    assert outside.status == 404
    assert by_short_name.revision == "api-00001"
    assert with_port.revision == "api-00001"


async def test_a_public_route_also_answers_at_its_cluster_local_names_inside(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await gateway.wait_served(HELLO, "hello-00001")

    inside = await gateway.get("hello.default.svc.cluster.local", internal=True)
    external_host_inside = await gateway.get(HELLO, internal=True)

    assert inside.revision == "hello-00001"
    assert external_host_inside.status == 404


async def test_split_headers_overwrite_what_the_client_sent(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await gateway.wait_served(HELLO, "hello-00001")

    reply = await gateway.get(
        HELLO, headers={"Knative-Serving-Revision": "forged", "Knative-Serving-Namespace": "x"}
    )

    assert reply.headers["knative-serving-revision"] == "hello-00001"
    assert reply.headers["knative-serving-namespace"] == "default"
