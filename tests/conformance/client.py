"""A client that dials the gateway the way the Go suite's `CreateDialContext` does.

Go resolves the KIngress's `status.publicLoadBalancer.ingress[0].domainInternal`
to the load balancer's address and dials it at the URL's port (80 for http,
443 for https), whatever the URL's host. Here a load balancer is the gateway
Envoy's listeners on 127.0.0.1: `ports` maps the URL's port to the listener's
run-time port, so the Host header and the TLS server name (SNI) stay the URL's,
exactly as a client of a real load balancer sends them.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import (
    ClientConnectorError,
    ClientSession,
    ClientTimeout,
    ClientWSTimeout,
    TCPConnector,
)
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict

from .backends import canonical_key

# Go's http.Client has no timeout; each request here has one so a hang fails the test.
REQUEST_TIMEOUT = 60.0
_WS_TIMEOUT = ClientWSTimeout(ws_receive=REQUEST_TIMEOUT, ws_close=5)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDict[str]  # names are case-insensitive, as Go's http.Header.Get
    body: bytes

    def dump(self) -> str:
        """What Go's DumpResponse would log: status, headers, body."""
        lines = [f"HTTP {self.status}", *(f"{k}: {v}" for k, v in self.headers.items())]
        return "\n".join(lines) + "\n\n" + self.body.decode(errors="replace")[:2000]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    uri: str
    host: str
    method: str
    headers: Mapping[str, list[str]]
    proto_major: int
    proto_minor: int

    def header(self, name: str) -> str:
        """Go's `http.Header.Get`: the first value under the canonical key, or ""."""
        values = self.headers.get(canonical_key(name)) or [""]
        return values[0]


def runtime_info(body: bytes) -> RequestInfo:
    """The `request` part of the runtime image's JSON (`types.RuntimeInfo`)."""
    r: dict[str, Any] = json.loads(body)["request"]
    return RequestInfo(
        uri=r["uri"],
        host=r["host"],
        method=r["method"],
        headers=r["headers"] or {},
        proto_major=r["protoMajor"],
        proto_minor=r["protoMinor"],
    )


class _LoadBalancer(AbstractResolver):
    """Every host resolves to 127.0.0.1 at the listener port that serves the URL's port."""

    def __init__(self, ports: Mapping[int, int]) -> None:
        self._ports = dict(ports)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if port not in self._ports:
            raise OSError(f"the load balancer has no port {port} (it has {sorted(self._ports)})")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=self._ports[port],
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


class GatewayClient:
    """HTTP, websocket and gRPC through one load balancer (see the module docstring)."""

    def __init__(
        self, ports: Mapping[int, int], *, user_agent: str, tls: ssl.SSLContext | None = None
    ) -> None:
        self.ports = dict(ports)
        self._user_agent = user_agent
        connector = TCPConnector(resolver=_LoadBalancer(ports), ssl=tls if tls else True)
        self._session = ClientSession(
            connector=connector, timeout=ClientTimeout(total=REQUEST_TIMEOUT)
        )
        self._channels: list[grpc.aio.Channel] = []

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Reply:
        """One GET; raises OSError (aiohttp.ClientError) when the connection fails."""
        async with self._session.get(
            url,
            headers={"User-Agent": self._user_agent, **(headers or {})},
            allow_redirects=follow_redirects,
            timeout=ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            return Reply(response.status, CIMultiDict(response.headers), body)

    async def runtime_request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> RequestInfo:
        """Go's `RuntimeRequest`: the status must be 200, the body the runtime image's JSON."""
        reply = await self.get(url, headers=headers)
        assert reply.status == 200, (
            f"GET {url}: got unexpected status: {reply.status}, expected [200]\n{reply.dump()}"
        )
        return runtime_info(reply.body)

    async def expect_status(
        self, url: str, statuses: set[int], *, allow_dial_error: bool = False
    ) -> Reply | None:
        """Go's `RuntimeRequestWithExpectations` with a status expectation."""
        try:
            reply = await self.get(url)
        except OSError as e:
            if allow_dial_error and _is_dial_error(e):
                return None
            raise
        assert reply.status in statuses, (
            f"GET {url}: got unexpected status: {reply.status}, expected {sorted(statuses)}\n"
            f"{reply.dump()}"
        )
        return reply

    def ws_connect(self, url: str) -> Any:  # aiohttp's _WSRequestContextManager
        """A websocket to `url` (`ws://host/`) through the load balancer."""
        return self._session.ws_connect(
            url, headers={"User-Agent": self._user_agent}, timeout=_WS_TIMEOUT
        )

    def grpc_channel(self, domain: str) -> grpc.aio.Channel:
        """An h2c channel as Go's `passthrough:///domain:80` dials: authority `domain:80`."""
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self.ports[80]}",
            options=[("grpc.default_authority", f"{domain}:80"), ("grpc.enable_retries", 0)],
        )
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self._session.close()


def _is_dial_error(error: OSError) -> bool:
    return isinstance(error, ClientConnectorError)
