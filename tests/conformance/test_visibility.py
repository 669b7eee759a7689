"""visibility, visibility/split and visibility/path (visibility.go): cluster-local hosts
answer only on the private load balancer; the public one returns 404 for them. As in Go,
a proxy Service forwards a public host to the private load balancer to reach them."""

from __future__ import annotations

import asyncio

import pytest

from .client import GatewayClient
from .env import (
    CLUSTER_SUFFIX,
    DOMAIN,
    NAMESPACE,
    Conformance,
    object_name,
    private_domain,
    rule,
    split,
)
from .sampling import doubling_weights, split_errors, tally

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

HEADER = "Foo-Bar-Baz"
WHICH = "Which-Backend"
SPLIT_REQUESTS = 1000  # as Go (each crosses the gateway twice and the proxy once)


async def _public_proxy(
    env: Conformance, case: str, ingress: dict, private_host: str, public_host: str
) -> GatewayClient:
    """Go's CreateProxyService + a public Ingress to it; returns its client."""
    proxy, proxy_port = await env.create_proxy_service(case, private_host, private_domain(ingress))
    spec = {"rules": [rule([public_host], [{"splits": [split(proxy, proxy_port)]}])]}
    _, client = await env.create_ingress_ready(case, spec)
    return client


async def test_visibility(env: Conformance) -> None:
    name, port = await env.create_runtime_service("visibility")
    private_hosts = {
        "fqdn": f"{object_name('visibility')}.{NAMESPACE}.svc.{CLUSTER_SUFFIX}",
        "short": f"{object_name('visibility')}.{NAMESPACE}.svc",
        "shortest": f"{object_name('visibility')}.{NAMESPACE}",
    }
    spec = {
        "rules": [
            rule(list(private_hosts.values()), [{"splits": [split(name, port)]}], "ClusterLocal")
        ]
    }
    ingress, client = await env.create_ingress_ready("visibility", spec)
    for host in private_hosts.values():  # not publicly accessible
        await client.expect_status(f"http://{host}", {404}, allow_dial_error=True)

    async def through_proxy(kind: str, private_host: str) -> None:
        public_host = f"{object_name(f'visibility/{kind}')}.publicproxy.{DOMAIN}"
        proxy_client = await _public_proxy(
            env, f"visibility/{kind}", ingress, private_host, public_host
        )
        await proxy_client.runtime_request(f"http://{public_host}")

    await asyncio.gather(*(through_proxy(k, h) for k, h in private_hosts.items()))


async def test_visibility_split(env: Conformance) -> None:
    weights = doubling_weights()
    services = await asyncio.gather(
        *(env.create_runtime_service("visibility/split") for _ in weights)
    )
    splits = [
        split(n, p, appendHeaders={HEADER: n}, percent=w)
        for (n, p), w in zip(services, weights, strict=True)
    ]
    name = object_name("visibility/split")
    private_host = f"{name}.{NAMESPACE}.svc.{CLUSTER_SUFFIX}"
    ingress, client = await env.create_ingress_ready(
        "visibility/split", {"rules": [rule([private_host], [{"splits": splits}], "ClusterLocal")]}
    )
    await client.expect_status(f"http://{private_host}", {404}, allow_dial_error=True)
    public_host = f"{name}.{DOMAIN}"
    proxy_client = await _public_proxy(env, "visibility/split", ingress, private_host, public_host)
    seen = await tally(proxy_client, f"http://{public_host}", HEADER, SPLIT_REQUESTS)
    by_name = {n: w for (n, _), w in zip(services, weights, strict=True)}
    errors = split_errors(seen, by_name, SPLIT_REQUESTS, margin=10.0)
    assert not errors, "\n".join(errors)


async def test_visibility_path(env: Conformance) -> None:
    (foo, foo_port), (bar, bar_port), (baz, baz_port), (main, port) = await asyncio.gather(
        *(env.create_runtime_service("visibility/path") for _ in range(4))
    )
    paths = [
        {"path": p, "splits": [split(n, pt, appendHeaders={WHICH: n}, percent=100)]}
        for p, n, pt in (("/foo", foo, foo_port), ("/bar", bar, bar_port), ("/baz", baz, baz_port))
    ]
    paths.append({"splits": [split(main, port, appendHeaders={WHICH: main}, percent=100)]})
    name = object_name("visibility/path")
    private_host = f"{name}.{NAMESPACE}.svc.{CLUSTER_SUFFIX}"
    ingress, client = await env.create_ingress_ready(
        "visibility/path", {"rules": [rule([private_host], paths, "ClusterLocal")]}
    )
    for path in ("", "/foo", "/bar", "/baz"):
        await client.expect_status(f"http://{private_host}{path}", {404}, allow_dial_error=True)
    public_host = f"{name}.{DOMAIN}"
    proxy_client = await _public_proxy(env, "visibility/path", ingress, private_host, public_host)
    want = {"/foo": foo, "/bar": bar, "/baz": baz, "": main, "/asdf": main}
    got = {}
    for path in want:
        info = await proxy_client.runtime_request(f"http://{public_host}{path}")
        got[path] = info.header(WHICH)
    assert got == want
