"""External authorization (`extauthz-*` in config-xds) through the real Envoy: a local gRPC
authorizer and a local HTTP one each allow one request and deny another, an unreachable one
fails closed or open as configured, and Knative's probes never reach any of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from knative_xds import synth

from .gateway import free_port

HELLO = "hello.default.example.com"
PROBE = {"K-Network-Probe": "probe", "K-Network-Hash": "override"}


def config_xds(**data: str) -> dict:
    return synth.config_map("config-xds", {k.replace("_", "-"): v for k, v in data.items()})


async def hello_world(gateway) -> list[dict]:
    return [
        *await gateway.ready_revisions("hello-1"),
        synth.route("hello", [synth.target("hello-1", 100)]),
    ]


@dataclass
class Seen:
    """What an authorizer was asked: per call, the request's headers (lower-case) and path."""

    calls: list[tuple[dict[str, str], str]] = field(default_factory=list)

    def marks(self) -> list[str]:
        return [headers.get("x-mark", "") for headers, _ in self.calls]


class Authorizer(auth_grpc.AuthorizationServicer):
    """Envoy's gRPC Authorization API: allows `x-allow: yes`, denies the rest with 403."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Check(self, request: auth.CheckRequest, context) -> auth.CheckResponse:
        http = request.attributes.request.http
        headers = dict(http.headers)
        self.seen.calls.append((headers, http.path))
        if headers.get("x-allow") == "yes":
            return auth.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
        return auth.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
            denied_response=auth.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden)
            ),
        )


@contextlib.asynccontextmanager
async def grpc_authorizer() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    server = grpc.aio.server()
    auth_grpc.add_AuthorizationServicer_to_server(Authorizer(seen), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, seen
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def http_authorizer() -> AsyncIterator[tuple[int, Seen]]:
    """An HTTP authorizer: 200 for `Authorization: Bearer yes`, 403 for the rest. Envoy
    sends it the request's headers (Authorization among them) on a request of its own."""
    seen = Seen()

    async def check(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen.calls.append((headers, request.path))
        ok = headers.get("authorization") == "Bearer yes"
        return web.Response(status=200 if ok else 403, text="ok" if ok else "denied")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", check)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, seen
    finally:
        await runner.cleanup()


async def denied(gateway) -> bool:
    return (await gateway.get(HELLO, headers={"X-Mark": "wait"})).status == 403


async def test_grpc_authorizer_allows_one_request_denies_another_and_never_sees_probes(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    await gateway.start(await hello_world(gateway))
    await gateway.wait_served(HELLO, "hello-1")
    pid = gateway.envoy_pid
    async with grpc_authorizer() as (port, seen):
        gateway.write(
            [config_xds(extauthz_host=f"127.0.0.1:{port}", extauthz_protocol="grpc")],
            "config-xds.yaml",
        )
        await gateway.wait_until(lambda: denied(gateway), what="ext_authz on the listener")

        allowed = await gateway.get(HELLO, headers={"X-Allow": "yes", "X-Mark": "allowed"})
        assert (allowed.status, allowed.revision) == (200, "hello-1")
        assert (await gateway.get(HELLO, headers={"X-Mark": "refused"})).status == 403

        # A probe is answered, unchecked; the check that follows it is the next one seen.
        probe = await gateway.get(HELLO, headers={**PROBE, "X-Mark": "probe"})
        assert (probe.status, probe.revision) == (200, "hello-1")
        assert (await gateway.get(HELLO, headers={"X-Mark": "after"})).status == 403
        marks = seen.marks()
        assert marks[-3:] == ["allowed", "refused", "after"], marks
        assert "probe" not in marks
        # The probe header alone (no K-Network-Probe) is checked like any request.
        only_hash = {"K-Network-Hash": "override", "X-Mark": "hash-only"}
        assert (await gateway.get(HELLO, headers=only_hash)).status == 403
        assert seen.marks()[-1] == "hash-only"
    assert gateway.envoy_pid == pid, "Envoy was not restarted"


async def test_http_authorizer_allows_one_request_denies_another_under_its_path_prefix(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    await gateway.start(await hello_world(gateway))
    await gateway.wait_served(HELLO, "hello-1")
    async with http_authorizer() as (port, seen):
        gateway.write(
            [
                config_xds(
                    extauthz_host=f"127.0.0.1:{port}",
                    extauthz_protocol="http",
                    extauthz_path_prefix="/verify",
                    extauthz_timeout="5000",
                )
            ],
            "config-xds.yaml",
        )
        await gateway.wait_until(lambda: denied(gateway), what="ext_authz on the listener")
        calls = len(seen.calls)

        allowed = await gateway.get(HELLO, headers={"Authorization": "Bearer yes"})
        assert (allowed.status, allowed.revision) == (200, "hello-1")
        assert (await gateway.get(HELLO, headers={"Authorization": "Bearer no"})).status == 403
        probe = await gateway.get(HELLO, headers={**PROBE, "Authorization": "Bearer probe"})
        assert (probe.status, probe.revision) == (200, "hello-1")
        assert (await gateway.get(HELLO)).status == 403

        asked = [headers.get("authorization") for headers, _ in seen.calls[calls:]]
        assert asked == ["Bearer yes", "Bearer no", None], asked
        assert {path for _, path in seen.calls} == {"/verify/"}


async def test_an_unreachable_authorizer_fails_closed_then_open_as_configured(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    await gateway.start(await hello_world(gateway))
    await gateway.wait_served(HELLO, "hello-1")
    nobody = f"127.0.0.1:{free_port()}"  # bound then closed: nothing listens there

    gateway.write(
        [config_xds(extauthz_host=nobody, extauthz_failure_mode_allow="false")],
        "config-xds.yaml",
    )

    async def closed() -> bool:
        return (await gateway.get(HELLO)).status != 200

    await gateway.wait_until(closed, what="requests to fail closed")
    status = (await gateway.get(HELLO, headers={"X-Allow": "yes"})).status
    assert status == 403, status  # Envoy's status_on_error
    # A probe does not need the authorizer: it is answered even so.
    assert (await gateway.get(HELLO, headers=PROBE)).status == 200

    gateway.write(
        [config_xds(extauthz_host=nobody, extauthz_failure_mode_allow="true")],
        "config-xds.yaml",
    )
    await gateway.wait_served(HELLO, "hello-1")
    assert (await gateway.get(HELLO)).revision == "hello-1"

    # Off again: the filter and its cluster go, requests pass.
    gateway.write([config_xds()], "config-xds.yaml")
    await gateway.wait_until(
        lambda: not gateway.envoy_stats(r"^cluster\.ext-authz\."),
        what="the authorizer's cluster to go",
    )
    assert (await gateway.get(HELLO)).revision == "hello-1"
