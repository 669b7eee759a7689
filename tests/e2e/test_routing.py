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


API_NAMES = ("api.default", "api.default.svc", "api.default.svc.cluster.local")


async def cluster_local_api(gateway) -> None:
    port = await gateway.app("api-00001")
    await gateway.start(
        [
            s.route("api", [s.target("api-00001", 100)], cluster_local=True),
            s.revision("api-00001"),
            s.endpoint_slice("api-00001", ["127.0.0.1"], port),
        ]
    )
    await gateway.wait_served("api.default.svc.cluster.local", "api-00001", internal=True)


async def test_a_cluster_local_route_answers_inside_at_its_three_names_with_any_port(gateway):
    await cluster_local_api(gateway)
    # One scope keyed by the first two labels serves all three names. The key is built
    # after the port is stripped: `api.default:8081` would otherwise give `default:8081`.
    hosts = [*API_NAMES, *(f"{h}:{p}" for h in API_NAMES for p in (gateway.internal, 1234))]

    inside = {h: (await gateway.get(h, internal=True)).revision for h in hosts}

    assert inside == dict.fromkeys(hosts, "api-00001")


async def test_a_cluster_local_route_is_404_outside_and_for_names_only_starting_like_it(gateway):
    await cluster_local_api(gateway)
    outside_hosts = [*API_NAMES, *(f"{h}:{gateway.external}" for h in API_NAMES)]

    outside = {h: (await gateway.get(h)).status for h in outside_hosts}
    # Same first two labels, so the same scope; but the Route's table has no such host.
    lookalike = await gateway.get("api.default.bogus", internal=True)
    lookalike_with_port = await gateway.get(f"api.default.bogus:{gateway.internal}", internal=True)

    assert outside == dict.fromkeys(outside_hosts, 404)
    assert (lookalike.status, lookalike_with_port.status) == (404, 404)


async def test_a_public_route_answers_inside_at_its_cluster_local_names_and_public_host(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await gateway.wait_served(HELLO, "hello-00001")

    inside = await gateway.get("hello.default.svc.cluster.local", internal=True)
    # Knative's visibility contract: an ExternalIP host answers on both listeners.
    external_host_inside = await gateway.get(HELLO, internal=True)
    # It starts with `hello.default` too, reaching the Route's internal table: no such host.
    bogus = await gateway.get("hello.default.bogus", internal=True)

    assert inside.revision == "hello-00001"
    assert external_host_inside.revision == "hello-00001"
    assert bogus.status == 404


async def test_a_public_host_with_a_port_answers_and_reaches_the_app_without_it(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await gateway.wait_served(HELLO, "hello-00001")

    replies = [await gateway.get(f"{HELLO}:{p}") for p in (gateway.external, 1234)]

    assert [r.revision for r in replies] == ["hello-00001", "hello-00001"]
    # The gateway strips the port before it picks a scope, and forwards the host so.
    assert [r.headers["host"] for r in replies] == [HELLO, HELLO]


async def test_split_headers_overwrite_what_the_client_sent(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    await gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await gateway.wait_served(HELLO, "hello-00001")

    reply = await gateway.get(
        HELLO, headers={"Knative-Serving-Revision": "forged", "Knative-Serving-Namespace": "x"}
    )

    assert reply.headers["knative-serving-revision"] == "hello-00001"
    assert reply.headers["knative-serving-namespace"] == "default"
