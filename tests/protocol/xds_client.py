"""A raw ADS client on the generated stubs that checks every response it receives.

Nothing of the server's own code is used. Like go-control-plane's fake stream,
every response is checked: a new and increasing nonce, a version, resources of
the response's type only (each with a name and a version in Delta), and no
name twice. Responses are queued by a reader task; tests take them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE

# How long a test waits for something that must happen. That something must not happen is
# never shown by waiting: see `expect_next_is`.
WAIT = 5.0

MESSAGES: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}


def resource_name(type_url: str, message: Message) -> str:
    if type_url == ENDPOINT:
        return message.cluster_name  # type: ignore[attr-defined]
    return message.name  # type: ignore[attr-defined]


class ProtocolViolation(AssertionError):
    """The server sent a response that breaks a rule every client relies on."""


class XdsClient:
    """One ADS stream. A reader task checks and queues every response; tests take them in order."""

    delta: bool

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        self.call = method()
        self.node = base_pb2.Node(id=node_id, cluster="gateways")
        self.received: list[Any] = []
        # The last response a test took, per type: what the next request answers.
        self.last: dict[str, Any] = {}
        self.violations: list[str] = []
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._nonces: set[str] = set()
        self._last_nonce = 0
        self._sent_node = False
        self.written = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                problems = self._check(response)
                self.violations.extend(problems)
                self.received.append(response)
                self._inbox.put_nowait(
                    ProtocolViolation("; ".join(problems)) if problems else response
                )
        except grpc.aio.AioRpcError as e:
            self._inbox.put_nowait(e)
            return
        self._inbox.put_nowait(EOFError("the server ended the stream"))

    def _check(self, response: Any) -> list[str]:
        problems = []
        nonce = response.nonce
        if not nonce or nonce in self._nonces:
            problems.append(f"nonce {nonce!r} is not new")
        elif nonce.isdigit() and int(nonce) <= self._last_nonce:
            problems.append(f"nonce {nonce} does not increase (last {self._last_nonce})")
        self._nonces.add(nonce)
        if nonce.isdigit():
            self._last_nonce = max(self._last_nonce, int(nonce))
        version = response.system_version_info if self.delta else response.version_info
        if not version:
            problems.append("response has no version")
        names = self._names_and_check(response, problems)
        seen = set()
        for name in names:
            if name in seen:
                problems.append(f"{name} twice in one response")
            seen.add(name)
        return problems

    def _names_and_check(self, response: Any, problems: list[str]) -> list[str]:
        raise NotImplementedError

    def _first(self, request: Any) -> Any:
        """Only the first request on the stream carries the node, as Envoy may do."""
        if not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        return request

    async def write(self, request: Any) -> None:
        await self.call.write(self._first(request))
        self.written += 1

    async def recv(self, type_url: str | None = None, timeout: float = WAIT) -> Any:
        """The next response, which must come within `timeout` (and be of `type_url`, if given)."""
        async with asyncio.timeout(timeout):
            item = await self._inbox.get()
        if isinstance(item, BaseException):
            raise item
        if type_url is not None:
            assert item.type_url == type_url, f"expected {type_url}, got {describe(item)}"
        self.last[item.type_url] = item
        return item

    async def expect_next_is(
        self, type_url: str, names: Iterable[str], *, version: str | None = None
    ) -> Any:
        """The next response, which must be `type_url` with exactly `names` (in Delta, and
        nothing removed), and `version` if given.

        The barrier that proves a change pushed nothing: after that change, cause one
        that must push (see `Harness.barrier`) and take its response with this. Had the
        first change pushed, its response would come first and fail here; had the server
        folded it into the barrier's response, the names or version would not match.
        """
        response = await self.recv()
        got = (response.type_url, sorted(names_in(response)), removed_in(response))
        if got != (type_url, sorted(names), []) or version not in (None, version_of(response)):
            raise AssertionError(
                f"expected the barrier's {type_url.rsplit('.', 1)[-1]} {sorted(names)}"
                f"{'' if version is None else f' at {version}'} first, got {describe(response)}"
                f" at {version_of(response)}: the change before the barrier pushed something"
            )
        return response

    async def status(self, timeout: float = WAIT) -> grpc.StatusCode:
        """The status the server ended the stream with."""
        async with asyncio.timeout(timeout):
            return await self.call.code()

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def version_of(response: Any) -> str:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return response.system_version_info
    return response.version_info


def removed_in(response: Any) -> list[str]:
    return list(getattr(response, "removed_resources", ()))


def describe(item: Any) -> str:
    if isinstance(item, BaseException):
        return repr(item)
    names = names_in(item)
    return (
        f"{item.type_url.rsplit('.', 1)[-1]} nonce={item.nonce} {names} removed={removed_in(item)}"
    )


def decode(type_url: str, packed: Any) -> Message:
    return MESSAGES[type_url].FromString(packed.value)


def names_in(response: Any) -> list[str]:
    """Resource names in a response, in order (SotW: from the decoded messages)."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    return [
        resource_name(response.type_url, decode(response.type_url, a)) for a in response.resources
    ]


def tables_named(scopes: Any) -> list[str]:
    """The route tables the scopes in an SRDS response point at, sorted, each once."""
    return sorted({m.route_configuration_name for m in messages_in(scopes).values()})  # type: ignore[attr-defined]


def messages_in(response: Any) -> dict[str, Message]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return {r.name: decode(response.type_url, r.resource) for r in response.resources}
    decoded = (decode(response.type_url, a) for a in response.resources)
    return {resource_name(response.type_url, m): m for m in decoded}


class SotwClient(XdsClient):
    delta = False

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        super().__init__(channel, node_id)
        # Per type: the names this client asks for, and the last version it accepted.
        self.names: dict[str, list[str]] = {}
        self.accepted: dict[str, str] = {}

    def _names_and_check(self, response: Any, problems: list[str]) -> list[str]:
        names = []
        for packed in response.resources:
            if packed.type_url != response.type_url:
                problems.append(
                    f"resource of type {packed.type_url} in a {response.type_url} response"
                )
                continue
            names.append(resource_name(response.type_url, decode(response.type_url, packed)))
        return names

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        nonce: str = "",
        version: str | None = None,
    ) -> None:
        """A request naming `names` (a SotW request always lists every name it wants)."""
        self.names[type_url] = list(names)
        await self.write(
            discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                resource_names=self.names[type_url],
                response_nonce=nonce,
                version_info=self.accepted.get(type_url, "") if version is None else version,
            )
        )

    async def ack(self, response: Any, names: Iterable[str] | None = None) -> None:
        """Accept `response`, optionally changing the names asked for in the same request."""
        self.accepted[response.type_url] = response.version_info
        wanted = self.names.get(response.type_url, []) if names is None else names
        await self.request(response.type_url, wanted, nonce=response.nonce)

    async def nack(self, response: Any, message: str = "rejected by test") -> None:
        """Reject `response`: echo its nonce, keep the last accepted version, say why."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url,
            resource_names=self.names.get(response.type_url, []),
            response_nonce=response.nonce,
            version_info=self.accepted.get(response.type_url, ""),
            error_detail=status_pb2.Status(code=3, message=message),
        )
        await self.write(request)


class DeltaClient(XdsClient):
    delta = True

    def _names_and_check(self, response: Any, problems: list[str]) -> list[str]:
        names = []
        for r in response.resources:
            if r.resource.type_url != response.type_url:
                problems.append(
                    f"resource of type {r.resource.type_url} in a {response.type_url} response"
                )
            if not r.name or not r.version:
                problems.append(f"resource {r.name!r} lacks a name or a version")
            names.append(r.name)
        both = set(names) & set(response.removed_resources)
        if both:
            problems.append(f"{sorted(both)} both sent and removed")
        if len(set(response.removed_resources)) != len(response.removed_resources):
            problems.append("a name twice in removed_resources")
        return names

    async def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        initial: Mapping[str, str] | None = None,
    ) -> None:
        await self.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=list(subscribe),
                resource_names_unsubscribe=list(unsubscribe),
                response_nonce=nonce,
                initial_resource_versions=dict(initial or {}),
            )
        )

    async def ack(
        self, response: Any, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = ()
    ) -> None:
        await self.request(response.type_url, subscribe, unsubscribe, nonce=response.nonce)

    async def nack(self, response: Any, message: str = "rejected by test") -> None:
        await self.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url,
                response_nonce=response.nonce,
                error_detail=status_pb2.Status(code=3, message=message),
            )
        )
