"""An Envoy-like ADS client: what it asks for, in the order Envoy asks, over one raw stream.

Clusters by wildcard, then the endpoints of each cluster it receives by name
(asked before it ACKs the clusters, as Envoy resumes its paused EDS requests
before the CDS ACK), then listeners, then scopes by wildcard, then the route
tables the scopes name (asked before the SRDS ACK). When a cluster or a scope
goes, it stops asking for the endpoints or route table that went with it.
A test drives each step, so it can check what arrives between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE
from knative_xds.server.ads import AdsServer
from knative_xds.server.plan import plan_type

from .xds_client import WAIT, DeltaClient, SotwClient, XdsClient, messages_in, names_in

# How often `settle` looks at the server's state while no response comes.
POLL = 0.05


def in_sync(ads: AdsServer, client: XdsClient) -> bool:
    """Whether the server has read every request of the client's newest stream, has no
    response of it unanswered, and would send it nothing more for the newest snapshot."""
    mine = [s for s in ads.streams.values() if s.status.node_id == client.node.id]
    if not mine:
        return False
    stream = max(mine, key=lambda s: s.status.id)
    if sum(stream.status.decisions.values()) != client.written:
        return False
    snapshot = ads.cache.current()
    if snapshot is None:
        return False
    for type_url, sub in stream.subs.items():
        if sub.inflight:
            return False
        if type_url not in snapshot.loaded:
            continue
        # As the stream plans: only the names changed since it last planned, if it has.
        since = sub.changes_since()
        only = None if since is None else ads.cache.changed_since(type_url, since)
        if only is not None and not (only or sub.recheck or sub.unsettled or sub.held_gone):
            continue
        plan = plan_type(type_url, snapshot, stream.subs, only, delta=stream.status.delta)
        if plan.out is not None:
            return False
    return True


class Gateway:
    """An Envoy-like ADS client over one raw stream, SotW or Delta."""

    def __init__(self, client: SotwClient | DeltaClient, ads: AdsServer | None = None) -> None:
        self.client = client
        self.ads = ads  # the server, for `settle`
        # Delta: the names subscribed per type (SotW keeps its whole lists on the client).
        self.subscribed: dict[str, list[str]] = {}
        # The route table each scope it holds names: a Delta removal gives only the scope.
        self.scopes: dict[str, str] = {}

    @property
    def delta(self) -> bool:
        return isinstance(self.client, DeltaClient)

    async def subscribe_wildcard(self, type_url: str) -> None:
        await self.client.request(type_url)

    def asked(self, type_url: str) -> list[str]:
        if isinstance(self.client, SotwClient):
            return list(self.client.names.get(type_url, []))
        return list(self.subscribed.get(type_url, []))

    async def want(self, type_url: str, names: Iterable[str]) -> None:
        """Ask for exactly `names` of a type, in one request, if that changes anything."""
        wanted = list(dict.fromkeys(names))
        asked = self.asked(type_url)
        new = [n for n in wanted if n not in asked]
        gone = [n for n in asked if n not in set(wanted)]
        if not new and not gone:
            return
        if isinstance(self.client, DeltaClient):
            await self.client.request(type_url, new, gone)
            self.subscribed[type_url] = wanted
        else:
            # A SotW request lists every name, and echoes the last nonce of its type.
            last = self.client.last.get(type_url)
            await self.client.request(type_url, wanted, nonce=last.nonce if last else "")

    async def ask(self, type_url: str, names: Iterable[str]) -> None:
        """Add names to what this type asks for."""
        await self.want(type_url, [*self.asked(type_url), *names])

    async def drop(self, type_url: str, names: Iterable[str]) -> None:
        """Stop asking for names."""
        gone = set(names)
        await self.want(type_url, [n for n in self.asked(type_url) if n not in gone])

    async def ack(self, response: Any) -> None:
        await self.client.ack(response)

    async def recv(self, type_url: str | None = None) -> Any:
        return await self.client.recv(type_url)

    async def follow_clusters(self, clusters: Any) -> None:
        """Ask for the endpoints of new clusters and drop those of gone ones, then ACK."""
        if self.delta:
            gone = set(removed(clusters))
            kept = [n for n in self.asked(ENDPOINT) if n not in gone]
            await self.want(ENDPOINT, [*kept, *names_in(clusters)])
        else:
            await self.want(ENDPOINT, names_in(clusters))  # full state: these and no others
        await self.ack(clusters)

    async def follow(self, scopes: Any) -> None:
        """Ask for the route tables the scopes name and drop those no scope names any more,
        then accept the scopes, as Envoy does."""
        named = {name: m.route_configuration_name for name, m in messages_in(scopes).items()}  # type: ignore[attr-defined]
        if self.delta:
            for name in removed(scopes):
                self.scopes.pop(name, None)
            self.scopes.update(named)
        else:
            self.scopes = named  # full state: these and no others
        await self.want(ROUTE, sorted(set(self.scopes.values())))
        await self.ack(scopes)

    async def converge(self) -> None:
        """Connect the way Envoy does and accept everything: clusters, endpoints, listeners,
        scopes, routes."""
        await self.subscribe_wildcard(CLUSTER)
        await self.follow_clusters(await self.recv(CLUSTER))
        await self.ack(await self.recv(ENDPOINT))
        await self.subscribe_wildcard(LISTENER)
        await self.ack(await self.recv(LISTENER))
        await self.subscribe_wildcard(SCOPED_ROUTE)
        await self.follow(await self.recv(SCOPED_ROUTE))
        await self.ack(await self.recv(ROUTE))

    async def settle(self) -> list[Any]:
        """Take and follow every response, as Envoy would, until the server has nothing
        left to send this stream; returns the responses in the order they came.

        For steps whose order depends on timing (a response and a request crossing).
        "Nothing left" is the server's own state, not a quiet spell: every request read,
        nothing in flight, and a plan of every type against the newest snapshot empty.
        """
        if self.ads is None:
            raise RuntimeError("settle needs the server: Gateway(client, ads=...)")
        taken = []
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    response = await self.client.recv(timeout=POLL)
                except TimeoutError:
                    if in_sync(self.ads, self.client):
                        return taken
                    continue
                taken.append(response)
                if response.type_url == CLUSTER:
                    await self.follow_clusters(response)
                elif response.type_url == SCOPED_ROUTE:
                    await self.follow(response)
                else:
                    await self.ack(response)


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
