"""headers/pre-split, headers/post-split, headers/probe and headers/tags (headers.go)."""

from __future__ import annotations

import asyncio

import pytest

from knative_xds.model.probe import compute_hash

from .env import DOMAIN, NAMESPACE, Conformance, object_name, rule, split

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

HEADER = "Foo-Bar-Baz"


async def test_headers_pre_split(env: Conformance) -> None:
    """A path's appendHeaders are set (not appended) before the split."""
    name, port = await env.create_runtime_service("headers/pre-split")
    host = f"{name}.{DOMAIN}"
    path = {"appendHeaders": {HEADER: name}, "splits": [split(name, port)]}
    _, client = await env.create_ingress_ready(
        "headers/pre-split", {"rules": [rule([host], [path])]}
    )
    without = await client.runtime_request(f"http://{host}")
    assert without.header(HEADER) == name, f"Headers[{HEADER!r}] = {without.header(HEADER)!r}"
    # A value of the client's own shows the gateway sets rather than appends.
    bogus = await client.runtime_request(f"http://{host}", headers={HEADER: "bogus"})
    assert bogus.headers.get(HEADER) == [name], f"Headers[{HEADER!r}] = {bogus.headers.get(HEADER)}"


async def test_headers_post_split(env: Conformance) -> None:
    """Each split's appendHeaders are set once it is chosen: 4 splits of 25 %, each seen
    within 100 requests, with and without a value of the client's own."""
    services = await asyncio.gather(
        *(env.create_runtime_service("headers/post-split") for _ in range(4))
    )
    names = {name for name, _ in services}
    splits = [
        split(name, port, appendHeaders={HEADER: name}, percent=25) for name, port in services
    ]
    host = f"{object_name('headers/post-split')}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "headers/post-split", {"rules": [rule([host], [{"splits": splits}])]}
    )

    async def seen_all(headers: dict[str, str]) -> set[str]:
        seen: set[str] = set()
        for _ in range(100):
            info = await client.runtime_request(f"http://{host}", headers=headers)
            seen.update(info.headers.get(HEADER) or [""])
            if seen == names:
                break
        return seen

    without, bogus = await asyncio.gather(seen_all({}), seen_all({HEADER: "bogus"}))
    assert without == names, f"(over 100 requests) Header[{HEADER!r}] want {names}, got {without}"
    assert bogus == names, f"(over 100 requests, with {HEADER}: bogus) got {bogus}"


async def test_headers_probe(env: Conformance) -> None:
    """Knative's probe: `K-Network-Hash: override` comes back as the KIngress's hash
    (ComputeHash); any other value reaches the backend as sent."""
    name, port = await env.create_runtime_service("headers/probe")
    host = f"{name}.{DOMAIN}"
    spec = {"rules": [rule([host], [{"splits": [split(name, port)]}])]}
    ingress, client = await env.create_ingress_ready("headers/probe", spec)
    want_hash = compute_hash(ingress["spec"], NAMESPACE, ingress["metadata"]["name"])
    random_hash = "2701a1b241db6af811992c57a5e11171847148ac3d2e1a8cc992a62f9e4fa111"
    cases = {
        "kingress generates hash": ("override", want_hash),
        "request overrides hash": (random_hash, random_hash),
    }
    for case, (sent, want) in cases.items():
        reply = await client.get(
            f"http://{host}", headers={"K-Network-Probe": "probe", "K-Network-Hash": sent}
        )
        assert reply.status == 200, f"{case}: status {reply.status}, wanted 200\n{reply.dump()}"
        got = reply.headers.get("K-Network-Hash")
        assert got == want, f"{case}: Header['K-Network-Hash'] = {got!r}, wanted {want!r}"


async def test_headers_tags(env: Conformance) -> None:
    """A path matching `Knative-Serving-Tag` exactly wins; any other request takes the next."""
    name, port = await env.create_runtime_service("headers/tags")
    host = f"{name}.{DOMAIN}"
    tagged = {
        "headers": {"Knative-Serving-Tag": {"exact": "the-tag"}},
        "appendHeaders": {"Which-Backend": "tag"},
        "splits": [split(name, port)],
    }
    untagged = {"appendHeaders": {"Which-Backend": "no-tag"}, "splits": [split(name, port)]}
    _, client = await env.create_ingress_ready(
        "headers/tags", {"rules": [rule([host], [tagged, untagged])]}
    )
    cases = {
        "matching tag header": ({"Knative-Serving-Tag": "the-tag"}, "tag"),
        "no tag header": ({}, "no-tag"),
        "empty tag header": ({"Knative-Serving-Tag": ""}, "no-tag"),
        "non-matching tag header": ({"Knative-Serving-Tag": "not-the-tag"}, "no-tag"),
    }
    for case, (headers, want) in cases.items():
        info = await client.runtime_request(f"http://{host}", headers=headers)
        got = info.header("Which-Backend")
        assert got == want, f"{case}: Header['Which-Backend'] = {got!r}, wanted {want!r}"
