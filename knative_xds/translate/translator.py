"""State → Envoy resources, re-translating only what an update touched.

The translator remembers each Ingress's route tables and scopes, each
backend's cluster and endpoints and each certificate's secret. An `Update`
from the resolver says which Ingresses, backends and certificates changed;
only those are rebuilt, and the result is a `Delta`: the names per type whose
resource changed or went away. New gateway options (`State.gateway`, from
ConfigMap `config-xds`) rebuild the listeners alone (and the external
authorizer's or the OTLP collector's cluster, when it changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..model import Backend, GatewayOptions, Ingress, ObjectKey, Tls, Update
from ..model.cluster_cert import cluster_cert_key
from ..resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, SECRET, Resource
from .clusters import cluster_resource
from .edge import EDGE, Edge
from .endpoints import endpoints_resource
from .ext_authz import EXT_AUTHZ_CLUSTER, ext_authz_cluster_resource
from .internal_tls import internal_tls_listener_resource
from .listeners import listener_resource, tls_chains, tls_listener_resource
from .names import Listener, route_table_name, scope_name
from .routes import listener_rules, route_tables
from .scopes import scope_key, scope_resource
from .secrets import secret_resource
from .tracing import TRACING_CLUSTER, tracing_cluster_resource

Ident = tuple[str, str]  # (type URL, name)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the gateway Envoy listens; the same for every connected gateway."""

    listen_address: str = "0.0.0.0"
    external_port: int = 8080
    internal_port: int = 8081
    external_tls_port: int = 8443
    # Cluster-local hosts over TLS, with config-xds `cluster-cert-secret` (Kourier's port).
    internal_tls_port: int = 8444
    # Load balancers in front of the gateway whose X-Forwarded-For entries are trusted;
    # `trusted-hops` in config-xds, when set, wins.
    trusted_hops: int = 0
    edge: Edge = EDGE


@dataclass(slots=True)
class Delta:
    """Changed resources per type: a Resource to set, or None to remove."""

    changes: dict[str, dict[str, Resource | None]] = field(default_factory=dict)

    def set(self, resource: Resource) -> None:
        self.changes.setdefault(resource.type_url, {})[resource.name] = resource

    def remove(self, type_url: str, name: str) -> None:
        self.changes.setdefault(type_url, {})[name] = None

    def count(self) -> int:
        return sum(len(v) for v in self.changes.values())


@dataclass(slots=True)
class Stats:
    """How much work translations did; tests use it to guard the O(change) property."""

    ingresses_translated: int = 0
    clusters_built: int = 0
    endpoints_built: int = 0
    route_tables_built: int = 0
    scopes_built: int = 0
    listeners_built: int = 0


class Translator:
    def __init__(self, gateway: GatewayConfig) -> None:
        self._gateway = gateway
        # Per Ingress: the version its tables and scopes were built from, and those.
        self._built: dict[ObjectKey, Ingress] = {}
        self._ingress_resources: dict[ObjectKey, dict[Ident, Resource]] = {}
        self._clusters: dict[str, tuple[Backend, Resource]] = {}
        self._endpoints: dict[str, tuple[tuple, Resource]] = {}
        self._secrets: dict[ObjectKey, Resource] = {}
        # Ingresses with TLS hosts: what the HTTPS listener's filter chains are made of.
        self._tls: dict[ObjectKey, tuple[Tls, ...]] = {}
        self._tls_listener: Resource | None = None
        self._internal_tls_listener: Resource | None = None
        # The options (config-xds) the listeners were built with, and the plain ones.
        self._options = GatewayOptions()
        self._plain_listeners: dict[str, Resource] = {}
        self._ext_authz_cluster: Resource | None = None
        self._tracing_cluster: Resource | None = None
        self._certificates_moved = False
        self._started = False
        self.stats = Stats()

    def translate(self, update: Update) -> Delta:
        """Everything the update changed, in one delta."""
        delta = self.translate_backends(update)
        self.translate_ingresses(update, sorted(update.changed_ingresses), delta)
        return delta

    def translate_backends(self, update: Update) -> Delta:
        """Step one of a staged translation: the clusters and endpoints of every backend
        the update touched, and its certificates.

        A first load publishes these before any route table: Envoy takes seconds to
        warm 10,000 clusters, and it can do that while the tables are being built.
        `translate_ingresses` is step two.
        """
        delta = Delta()
        for name in sorted(update.changed_backends):
            self._refresh_backend(name, update, delta)
        for key in sorted(update.changed_certificates):
            self._refresh_certificate(key, update, delta)
        return delta

    def translate_ingresses(self, update: Update, keys: Iterable[ObjectKey], delta: Delta) -> None:
        """Step two: the route tables and scopes of these Ingresses (and the listeners)."""
        # A certificate that came or went adds or drops its filter chain; a rotation
        # changes the secret alone.
        tls_touched, self._certificates_moved = self._certificates_moved, False
        options = update.state.gateway
        if not self._started or options != self._options:
            # New options rebuild the listeners alone: no route table or scope names them.
            tls_touched |= self._started
            self._started, self._options = True, options
            self._refresh_listeners(delta)
        for key in keys:
            ingress = update.state.ingresses.get(key)
            self._swap_resources(key, ingress, delta)
            tls = ingress.tls if ingress is not None else ()
            if self._tls.get(key, ()) != tls:
                tls_touched = True
                if tls:
                    self._tls[key] = tls
                else:
                    del self._tls[key]
        if tls_touched:
            self._refresh_tls_listener(delta)
            self._refresh_internal_tls_listener(delta)

    def owned(self, key: ObjectKey) -> Mapping[Ident, Resource]:
        """The resources that carry this Ingress's current version to a gateway: its route
        tables and scopes, and with TLS the HTTPS listener and its certificates."""
        out = dict(self._ingress_resources.get(key, {}))
        if key in self._tls and self._tls_listener is not None:
            out[(LISTENER, self._tls_listener.name)] = self._tls_listener
            for tls in self._tls[key]:
                secret = self._secrets.get(tls.secret)
                if secret is not None:
                    out[(SECRET, secret.name)] = secret
        return out

    def _edge(self) -> tuple[Edge, int]:
        """The edge limits and trusted hops: the flags', with config-xds's over them."""
        g, options = self._gateway, self._options
        edge = g.edge
        if options.stream_idle_timeout is not None:
            edge = replace(edge, stream_idle_timeout=options.stream_idle_timeout)
        hops = g.trusted_hops if options.trusted_hops is None else options.trusted_hops
        return edge, hops

    def _refresh_ext_authz(self, delta: Delta) -> None:
        """The authorizer's cluster (config-xds), set or removed with the listeners that
        name it; CDS goes before LDS, so a new listener finds it."""
        ext = self._options.ext_authz
        held = self._ext_authz_cluster
        if ext is None:
            if held is not None:
                delta.remove(CLUSTER, EXT_AUTHZ_CLUSTER)
                self._ext_authz_cluster = None
            return
        resource = ext_authz_cluster_resource(ext)
        if held is None or held.version != resource.version:
            delta.set(resource)
        self._ext_authz_cluster = resource

    def _refresh_tracing(self, delta: Delta) -> None:
        """The OTLP collector's cluster (config-xds), as the authorizer's is."""
        tracing, held = self._options.tracing, self._tracing_cluster
        if tracing is None:
            if held is not None:
                delta.remove(CLUSTER, TRACING_CLUSTER)
                self._tracing_cluster = None
            return
        resource = tracing_cluster_resource(tracing)
        if held is None or held.version != resource.version:
            delta.set(resource)
        self._tracing_cluster = resource

    def _refresh_listeners(self, delta: Delta) -> None:
        self._refresh_ext_authz(delta)
        self._refresh_tracing(delta)
        g = self._gateway
        edge, hops = self._edge()
        ports = {Listener.EXTERNAL: g.external_port, Listener.INTERNAL: g.internal_port}
        self.stats.listeners_built += len(ports)
        for listener, port in ports.items():
            resource = listener_resource(
                listener=listener,
                address=g.listen_address,
                port=port,
                edge=edge,
                trusted_hops=hops,
                options=self._options,
            )
            held = self._plain_listeners.get(resource.name)
            if held is None or held.version != resource.version:
                delta.set(resource)
            self._plain_listeners[resource.name] = resource

    def _refresh_tls_listener(self, delta: Delta) -> None:
        chains = tls_chains((key, t) for key, entries in self._tls.items() for t in entries)
        # A chain is served only once its certificate is: a missing Secret is the
        # model's problem to report, and Envoy would hold the whole listener warming.
        served = {r.name for r in self._secrets.values()}
        chains = {s: h for s, h in chains.items() if s in served}
        if not chains:
            if self._tls_listener is not None:
                delta.remove(LISTENER, self._tls_listener.name)
                self._tls_listener = None
            return
        g = self._gateway
        edge, hops = self._edge()
        resource = tls_listener_resource(
            address=g.listen_address,
            port=g.external_tls_port,
            chains=chains,
            edge=edge,
            trusted_hops=hops,
            options=self._options,
        )
        self.stats.listeners_built += 1
        if self._tls_listener is None or self._tls_listener.version != resource.version:
            delta.set(resource)
        self._tls_listener = resource

    def _refresh_internal_tls_listener(self, delta: Delta) -> None:
        """The cluster-local TLS listener, while its certificate (config-xds) is served:
        Envoy would hold a listener that names a missing secret warming."""
        key = cluster_cert_key(self._options)
        secret = self._secrets.get(key) if key is not None else None
        held = self._internal_tls_listener
        if secret is None:
            if held is not None:
                delta.remove(LISTENER, held.name)
                self._internal_tls_listener = None
            return
        g = self._gateway
        edge, hops = self._edge()
        resource = internal_tls_listener_resource(
            address=g.listen_address,
            port=g.internal_tls_port,
            secret=secret.name,
            edge=edge,
            trusted_hops=hops,
            options=self._options,
        )
        self.stats.listeners_built += 1
        if held is None or held.version != resource.version:
            delta.set(resource)
        self._internal_tls_listener = resource

    def _swap_resources(self, key: ObjectKey, ingress: Ingress | None, delta: Delta) -> None:
        """Rebuild one Ingress's tables and scopes, if `ingress` is not what they were built from."""
        if self._built.get(key) is ingress:
            return
        before = self._ingress_resources.pop(key, {})
        after = self._build(ingress, before) if ingress is not None else {}
        for ident in before.keys() - after.keys():
            # A scope can pass to another Ingress in the same update; when that
            # Ingress came first, the scope it set must stay.
            if delta.changes.get(ident[0], {}).get(ident[1]) is None:
                delta.remove(*ident)
        for ident, resource in after.items():
            held = before.get(ident)
            if held is None or held.version != resource.version:
                delta.set(resource)
        if ingress is None:
            self._built.pop(key, None)
        else:
            self._built[key] = ingress
            self._ingress_resources[key] = after

    def _build(self, ingress: Ingress, before: dict[Ident, Resource]) -> dict[Ident, Resource]:
        self.stats.ingresses_translated += 1
        out: dict[Ident, Resource] = {}
        for table in route_tables(ingress):
            out[(table.type_url, table.name)] = table
            self.stats.route_tables_built += 1
        shadowed = set(ingress.internal_shadowed)
        for listener in Listener:
            table = route_table_name(listener, ingress.key)
            if (ROUTE, table) not in out:
                continue
            hosts = [h for r in listener_rules(ingress, listener) for h in r.hosts]
            if listener is Listener.INTERNAL:
                hosts = [h for h in hosts if h not in shadowed]
            # One scope per key: a cluster-local rule's three hosts share one (scopes.py).
            for key in dict.fromkeys(scope_key(listener, h) for h in hosts):
                ident = (SCOPED_ROUTE, scope_name(listener, key))
                if ident in out:
                    continue
                kept = before.get(ident)
                # A scope is its key and its table: a split edit leaves it as it was.
                if kept is not None and kept.refs == (table,):
                    out[ident] = kept
                    continue
                out[ident] = scope_resource(listener, key, table)
                self.stats.scopes_built += 1
        return out

    def _refresh_backend(self, name: str, update: Update, delta: Delta) -> None:
        backend = update.state.backends.get(name)
        if backend is None:
            if self._clusters.pop(name, None):
                delta.remove(CLUSTER, name)
            if self._endpoints.pop(name, None):
                delta.remove(ENDPOINT, name)
            return
        held = self._clusters.get(name)
        if held is None or held[0] != backend:
            resource = cluster_resource(backend)
            self._clusters[name] = (backend, resource)
            self.stats.clusters_built += 1
            if held is None or held[1].version != resource.version:
                delta.set(resource)
        if backend.dns is not None:
            if self._endpoints.pop(name, None):
                delta.remove(ENDPOINT, name)
            return
        chosen = update.state.endpoints.get(name, ())
        held_eps = self._endpoints.get(name)
        if held_eps is None or held_eps[0] != chosen:
            resource = endpoints_resource(name, chosen)
            self._endpoints[name] = (chosen, resource)
            self.stats.endpoints_built += 1
            delta.set(resource)

    def _refresh_certificate(self, key: ObjectKey, update: Update, delta: Delta) -> None:
        certificate = update.state.certificates.get(key)
        held = self._secrets.get(key)
        if certificate is None:
            if held is not None:
                del self._secrets[key]
                delta.remove(SECRET, held.name)
                self._certificates_moved = True
            return
        self._certificates_moved |= held is None
        resource = secret_resource(certificate)
        if held is None or held.version != resource.version:
            self._secrets[key] = resource
            delta.set(resource)
