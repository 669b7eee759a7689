"""tls and httpoption (tls.go, httpoption.go): certificates from kubernetes.io/tls
Secrets, chosen by SNI, and plain HTTP served or redirected to https."""

from __future__ import annotations

import asyncio

import pytest

from .client import GatewayClient
from .env import DOMAIN, NAMESPACE, Conformance, rule, split

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


def tls_spec(hosts: list[str], name: str, port: int, secret: str, **extra: str) -> dict:
    return {
        **extra,
        "rules": [rule(hosts, [{"splits": [split(name, port)]}])],
        "tls": [{"hosts": hosts, "secretName": secret, "secretNamespace": NAMESPACE}],
    }


async def test_tls(env: Conformance) -> None:
    """A host with TLS answers over http and over https with its Secret's certificate."""
    name, port = await env.create_runtime_service("tls")
    hosts = [f"{name}.{DOMAIN}"]
    secret, trust = env.create_tls_secret("tls", hosts)
    _, client = await env.create_ingress_ready(
        "tls", tls_spec(hosts, name, port, secret), tls=trust
    )
    await client.runtime_request(f"http://{hosts[0]}")
    await client.runtime_request(f"https://{hosts[0]}")


async def _create(env: Conformance, option: str) -> tuple[str, GatewayClient]:
    name, port = await env.create_runtime_service(f"httpoption/{option}")
    hosts = [f"{name}.{DOMAIN}"]
    secret, trust = env.create_tls_secret("httpoption", hosts)
    spec = tls_spec(hosts, name, port, secret, httpOption=option)
    _, client = await env.create_ingress_ready("httpoption", spec, tls=trust)
    return hosts[0], client


async def test_httpoption(env: Conformance) -> None:
    """Two Ingresses at once, Enabled and Redirected: each option is its own, not global.
    Each host's certificate comes from its own CA, so each https request also proves the
    gateway picked the certificate by SNI."""
    want = {"Enabled": 200, "Redirected": 301}
    created = await asyncio.gather(*(_create(env, option) for option in want))
    for (host, client), (option, code) in zip(created, want.items(), strict=True):
        await client.runtime_request(f"https://{host}")
        reply = await client.get(f"http://{host}", follow_redirects=False)
        assert reply.status == code, (
            f"{option}: unexpected status code: {reply.status}, wanted {code}\n{reply.dump()}"
        )
        if code == 301:
            location = reply.headers.get("Location", "")
            assert location.startswith(f"https://{host}"), (
                f"{option}: redirected to {location!r}, wanted https://{host}/..."
            )
