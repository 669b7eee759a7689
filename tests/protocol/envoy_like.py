"""An Envoy-like ADS client: what it asks for, in the order Envoy asks, over one raw stream.

Clusters by wildcard, then the endpoints of each cluster it receives by name
(asked before it ACKs the clusters, as Envoy resumes its paused EDS requests
before the CDS ACK), then listeners, then scopes by wildcard, then the route
tables the scopes name (asked before the SRDS ACK). A test drives each step, so
it can check what arrives between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE

from .xds_client import DeltaClient, SotwClient, messages_in, names_in, tables_named


class Gateway:
    """An Envoy-like ADS client over one raw stream, SotW or Delta."""

    def __init__(self, client: SotwClient | DeltaClient) -> None:
        self.client = client
        # Delta: the names subscribed per type (SotW keeps its whole lists on the client).
        self.subscribed: dict[str, list[str]] = {}

    async def subscribe_wildcard(self, type_url: str) -> None:
        await self.client.request(type_url)

    async def ask(self, type_url: str, names: Iterable[str]) -> None:
        """Add names to what this type asks for (a delta, or SotW's whole list again)."""
        new = [n for n in dict.fromkeys(names) if n not in self._asked(type_url)]
        if isinstance(self.client, DeltaClient):
            await self.client.request(type_url, new)
        else:
            await self._request_sotw(type_url, [*self._asked(type_url), *new])
        self._asked(type_url).extend(new)

    async def drop(self, type_url: str, names: Iterable[str]) -> None:
        """Stop asking for names, as Envoy does when the cluster or scope naming them goes."""
        gone = set(names)
        kept = [n for n in self._asked(type_url) if n not in gone]
        if isinstance(self.client, DeltaClient):
            await self.client.request(type_url, unsubscribe=sorted(gone))
        else:
            await self._request_sotw(type_url, kept)
        self._asked(type_url)[:] = kept

    async def _request_sotw(self, type_url: str, names: list[str]) -> None:
        assert isinstance(self.client, SotwClient)
        last = self.client.last.get(type_url)
        await self.client.request(type_url, names, nonce=last.nonce if last else "")

    def _asked(self, type_url: str) -> list[str]:
        if isinstance(self.client, SotwClient):
            return self.client.names.setdefault(type_url, [])
        return self.subscribed.setdefault(type_url, [])

    def asked(self, type_url: str) -> list[str]:
        return list(self._asked(type_url))

    async def ack(self, response: Any) -> None:
        await self.client.ack(response)

    async def recv(self, type_url: str | None = None) -> Any:
        return await self.client.recv(type_url)

    async def follow(self, scopes: Any) -> None:
        """Ask for the route tables new scopes name, then accept the scopes, as Envoy does."""
        await self.ask(ROUTE, tables_named(scopes))
        await self.ack(scopes)

    async def converge(self) -> None:
        """Connect the way Envoy does and accept everything: clusters, endpoints, listeners,
        scopes, routes."""
        await self.subscribe_wildcard(CLUSTER)
        clusters = await self.recv(CLUSTER)
        await self.ask(ENDPOINT, names_in(clusters))
        await self.ack(clusters)
        await self.ack(await self.recv(ENDPOINT))
        await self.subscribe_wildcard(LISTENER)
        await self.ack(await self.recv(LISTENER))
        await self.subscribe_wildcard(SCOPED_ROUTE)
        await self.follow(await self.recv(SCOPED_ROUTE))
        await self.ack(await self.recv(ROUTE))


def removed(response: Any) -> list[str]:
    return list(getattr(response, "removed_resources", ()))


def clusters_named(tables: Any) -> set[str]:
    """Every cluster the route tables in a response send traffic to."""
    found = set()
    for table in messages_in(tables).values():
        for host in table.virtual_hosts:
            for route in host.routes:
                found.update(w.name for w in route.route.weighted_clusters.clusters)
                if route.route.cluster:
                    found.add(route.route.cluster)
    return found
