"""basics, basics/http2, hosts/multiple, retry and host-rewrite (basic.go, hosts.go,
retry.go, rewrite.go)."""

from __future__ import annotations

import pytest

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

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


def one_split(hosts: list[str], name: str, port: int | str, visibility: str = "ExternalIP") -> dict:
    return {"rules": [rule(hosts, [{"splits": [split(name, port)]}], visibility)]}


async def test_basics(env: Conformance) -> None:
    """A no-frills Ingress exposes a Service on the public load balancer."""
    name, port = await env.create_runtime_service("basics")
    host = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("basics", one_split([host], name, port))
    await client.runtime_request(f"http://{host}")


async def test_basics_http2(env: Conformance) -> None:
    """The same over a Service whose port is http2 (appProtocol h2c): the backend sees HTTP/2."""
    name, port = await env.create_runtime_service("basics/http2", "http2", "kubernetes.io/h2c")
    host = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("basics/http2", one_split([host], name, port))
    info = await client.runtime_request(f"http://{host}")
    assert info.proto_major == 2, f"ProtoMajor = {info.proto_major}, wanted 2"


async def test_hosts_multiple(env: Conformance) -> None:
    """One Ingress answers on several hosts."""
    name, port = await env.create_runtime_service("hosts/multiple")
    hosts = [
        f"{name}.{h}"
        for h in (
            "foo.com",
            "www.foo.com",
            "a-b-1.something-really-really-long.knative.dev",
            "add.your.interesting.domain.here.io",
        )
    ]
    _, client = await env.create_ingress_ready("hosts/multiple", one_split(hosts, name, port))
    for host in hosts:
        await client.runtime_request(f"http://{host}")


async def test_retry(env: Conformance) -> None:
    """No retries: the client sees the backend's first 503, then its 200."""
    name, port = await env.create_retry_service("retry")
    domain = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("retry", one_split([domain], name, port))
    first = await client.get(f"http://{domain}")
    assert first.status == 503, f"Got status {first.status}, expected 503\n{first.dump()}"
    second = await client.get(f"http://{domain}")
    assert second.status == 200, f"Got not OK status, expected success\n{second.dump()}"


async def test_host_rewrite(env: Conformance) -> None:
    """rewriteHost implements vanity hosts: public hosts reach a cluster-local one through
    an ExternalName Service that points at the private load balancer.

    Go's ExternalName Service and split use port 80, the private load balancer's port;
    here that port is the internal listener's run-time port (the same role)."""
    name, port = await env.create_runtime_service("host-rewrite")
    private_service = object_name("host-rewrite")
    private_host = f"{private_service}.{NAMESPACE}.svc.{CLUSTER_SUFFIX}"
    ingress, _ = await env.create_ingress_ready(
        "host-rewrite", one_split([private_host], name, port, "ClusterLocal")
    )
    balancer = private_domain(ingress)
    balancer_port = env.load_balancers.port(balancer, 80)
    env.create_external_name_service(private_host, balancer, balancer_port)
    hosts = [f"{name}.vanity.ismy.name", f"{name}.vanity.isalsomy.number"]
    path = {"rewriteHost": private_host, "splits": [split(private_service, balancer_port)]}
    _, client = await env.create_ingress_ready("host-rewrite", {"rules": [rule(hosts, [path])]})
    for host in hosts:
        await client.runtime_request(f"http://{host}")
