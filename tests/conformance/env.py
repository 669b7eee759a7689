"""One conformance environment: a fake Kubernetes API, knative-xds on it, the real Envoy.

The control plane runs as `serve --kubernetes` runs it (the Kubernetes source
reading KIngresses and the Services, EndpointSlices and Secrets they name, the
status writer reporting back), against `tests/fake_kube_api.py`'s API server.
The helpers mirror the Go suite's `util.go`: `create_runtime_service` and its
siblings start a local stand-in for an image and put a Service and an
EndpointSlice for it; `create_ingress_ready` puts a KIngress of our class,
waits for the status Go waits for and returns a client that dials the public
load balancer the status names. Names are unique per call, as Go's
`ObjectNameForTest` makes them, so tests share one environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import random
import re
import ssl
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from tests.fake_kube_api import FakeApiServer

from . import backends, ping
from .client import GatewayClient
from .plane import BalancerPorts, Plane

NAMESPACE = "serving-tests"  # test.ServingNamespace
DOMAIN = "example.com"  # test.NetworkingFlags.ServiceDomain
CLUSTER_SUFFIX = "cluster.local"  # test.NetworkingFlags.ClusterSuffix
INGRESS_CLASS = "xds.ingress.networking.knative.dev"
CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
NETWORKING = "networking.internal.knative.dev/v1alpha1"
CERTIFICATE_UID_LABEL = "networking.internal.knative.dev/certificate-uid"
# Go polls every second for up to 10 minutes; here the wait is on the API's own
# change notifications, so a generous bound costs nothing when things work.
READY_TIMEOUT = 20.0

Spec = dict[str, Any]


def object_name(case: str) -> str:
    """Go's `ObjectNameForTest`: the case's name made a DNS label, plus a random suffix."""
    base = re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")[:40]
    tail = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    return f"{base}-{tail}"


def ingress_spec_defaults(spec: Spec) -> Spec:
    """What the Go suite does to a spec before creating it: `SetDefaults` (rules default
    to ExternalIP; a lone split with no percent gets 100) and `setDefaultsForTest`
    (httpOption Enabled). The stored spec, and so the probe hash, is this one."""
    out = copy.deepcopy(spec)
    for rule in out.get("rules") or []:
        rule.setdefault("visibility", "ExternalIP")
        for path in (rule.get("http") or {}).get("paths") or []:
            splits = path.get("splits") or []
            if len(splits) == 1 and not splits[0].get("percent"):
                splits[0]["percent"] = 100
    if not out.get("httpOption"):
        out["httpOption"] = "Enabled"
    return out


def split(name: str, port: int | str, **extra: Any) -> dict[str, Any]:
    """An `IngressBackendSplit` to `name`:`port` in the serving namespace."""
    return {"serviceNamespace": NAMESPACE, "serviceName": name, "servicePort": port, **extra}


def rule(hosts: list[str], paths: list[dict[str, Any]], visibility: str = "ExternalIP") -> dict:
    return {"hosts": hosts, "visibility": visibility, "http": {"paths": paths}}


def is_ready(ingress: Mapping[str, Any]) -> bool:
    """Go's `Ingress.IsReady`: observedGeneration == generation and Ready is True."""
    status = ingress.get("status") or {}
    generation = (ingress.get("metadata") or {}).get("generation")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ready and status.get("observedGeneration") == generation


def _service_port(rng: random.Random) -> int:
    return 50 + rng.randrange(50)  # Go: "Avoid zero, but pick a low port number."


@dataclass
class Conformance:
    """The environment one test module shares (see the module docstring)."""

    workdir: Path
    api: FakeApiServer = field(default_factory=FakeApiServer)
    plane: Plane | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _rng: random.Random = field(default_factory=random.Random)
    _slices: dict[str, str] = field(default_factory=dict)  # Service name → its slice
    _served: dict[str, backends.Served] = field(default_factory=dict)  # → its backend

    async def start(self) -> None:
        await self.api.start()
        self._stack.push_async_callback(self.api.close)
        self.plane = Plane(self.api, self.workdir)
        self._stack.push_async_callback(self.plane.close)
        await self.plane.start()

    async def close(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            for served in self._served.values():
                await served.stop()

    @property
    def load_balancers(self) -> BalancerPorts:
        assert self.plane is not None
        return self.plane.load_balancers

    # -- backends (util.go's Create*Service) ---------------------------------------------

    async def _backend(
        self,
        case: str,
        start: Callable[[], Awaitable[backends.Served]],
        port_name: str,
        *,
        app_protocol: str | None = None,
    ) -> tuple[str, int]:
        """Start a backend; put its Service (a low port → the backend's) and EndpointSlice."""
        served = await start()
        name = object_name(case)
        self._served[name] = served
        port = _service_port(self._rng)
        service_port: dict[str, Any] = {"port": port, "targetPort": served.port}
        if port_name:
            service_port["name"] = port_name
        if app_protocol:
            service_port["appProtocol"] = app_protocol
        self.api.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"test-pod": name}},
                "spec": {
                    "type": "ClusterIP",
                    "ports": [service_port],
                    "selector": {"test-pod": name},
                },
            }
        )
        slice_port: dict[str, Any] = {"name": port_name, "port": served.port, "protocol": "TCP"}
        if app_protocol:
            slice_port["appProtocol"] = app_protocol
        slice_name = f"{name}-{object_name('x')[-5:]}"
        self._slices[name] = slice_name
        self.api.put(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                "ports": [slice_port],
            }
        )
        return name, port

    async def create_runtime_service(
        self, case: str, port_name: str = "http", app_protocol: str | None = None
    ) -> tuple[str, int]:
        """`CreateRuntimeService`: the runtime image behind a Service; (name, port)."""
        return await self._backend(
            case, backends.serve_runtime, port_name, app_protocol=app_protocol
        )

    async def create_timeout_service(self, case: str) -> tuple[str, int]:
        return await self._backend(case, backends.serve_timeout, "http")

    async def create_retry_service(self, case: str) -> tuple[str, int]:
        # Go names the retry image's port `http2` (ServicePortNameH2C): upstream h2c.
        return await self._backend(case, backends.serve_retry, "http2")

    async def create_websocket_service(self, case: str, suffix: str) -> tuple[str, int]:
        return await self._backend(case, lambda: backends.serve_websocket(suffix), "http")

    async def create_grpc_service(self, case: str, suffix: str) -> tuple[str, int]:
        return await self._backend(
            case,
            lambda: ping.serve_grpc_ping(suffix),
            "http2",
            app_protocol="kubernetes.io/h2c",
        )

    async def create_proxy_service(
        self, case: str, target: str, gateway_domain: str
    ) -> tuple[str, int]:
        """`CreateProxyService`: forwards to the load balancer `gateway_domain` names
        (at its port 80, as Go's proxy dials it), with `Host: target`."""
        gateway = ("127.0.0.1", self.load_balancers.port(gateway_domain, 80))
        return await self._backend(case, lambda: backends.serve_proxy(target, gateway), "")

    def create_external_name_service(self, target: str, gateway_domain: str, port: int) -> None:
        """`createExternalNameService`: `target`'s first label names a Service of type
        ExternalName pointing at `gateway_domain`, port named `http2` (as Go's)."""
        name, namespace, _ = target.split(".", 2)
        self.api.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "type": "ExternalName",
                    "externalName": gateway_domain,
                    "sessionAffinity": "None",
                    "ports": [{"name": "http2", "port": port, "targetPort": port}],
                },
            }
        )

    async def delete_service(self, name: str) -> None:
        """Go's cancel of a created service: the Service, its pod's endpoints and the pod
        (the backend stops answering) go away."""
        self.api.delete("discovery.k8s.io/v1", "EndpointSlice", NAMESPACE, self._slices.pop(name))
        self.api.delete("v1", "Service", NAMESPACE, name)
        await self._served.pop(name).stop()

    def create_tls_secret(self, case: str, hosts: list[str]) -> tuple[str, ssl.SSLContext]:
        """`CreateTLSSecret`: a `kubernetes.io/tls` Secret for `hosts` from a CA made now,
        and a client TLS context that trusts only that CA."""
        ca = trustme.CA(organization_name="Knative Ingress Conformance Testing")
        cert = ca.issue_cert(*hosts)
        name = object_name(case)
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        self.api.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": {"test-secret": name, CERTIFICATE_UID_LABEL: "test-uid"},
                },
                "data": {"tls.crt": b64(chain), "tls.key": b64(cert.private_key_pem.bytes())},
            }
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        return name, context

    # -- ingresses (util.go's CreateIngress*, UpdateIngress*) ------------------------------

    def create_ingress(
        self, case: str, spec: Spec, *, annotations: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """`CreateIngress`: annotated with our class unless `annotations` replaces them
        (`OverrideIngressAnnotation`). Go's `omitempty` writes nil and empty alike: none."""
        meta: dict[str, Any] = {"name": object_name(case), "namespace": NAMESPACE}
        chosen = {CLASS_ANNOTATION: INGRESS_CLASS} if annotations is None else dict(annotations)
        if chosen:
            meta["annotations"] = chosen
        return self.api.put(
            {
                "apiVersion": NETWORKING,
                "kind": "Ingress",
                "metadata": meta,
                "spec": ingress_spec_defaults(spec),
            }
        )

    def get_ingress(self, name: str) -> dict[str, Any]:
        try:
            return self.api.stored(NETWORKING, "Ingress", NAMESPACE, name)
        except KeyError:
            raise AssertionError(f"Ingress {NAMESPACE}/{name} not found") from None

    async def wait_ingress_ready(self, name: str) -> dict[str, Any]:
        """`WaitForIngressState(IsIngressReady)`, bounded by READY_TIMEOUT."""
        assert self.plane is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.plane.guard(self.api.wait_for(lambda: is_ready(self.get_ingress(name))))
        except TimeoutError:
            raise AssertionError(
                f"ingress {NAMESPACE}/{name} is not in desired state after "
                f"{READY_TIMEOUT}s, got: {self.get_ingress(name)}"
            ) from None
        return self.get_ingress(name)

    async def create_ingress_ready(
        self, case: str, spec: Spec, *, tls: ssl.SSLContext | None = None
    ) -> tuple[dict[str, Any], GatewayClient]:
        """`CreateIngressReady(WithTLS)`: create, wait for Ready, and a client for the
        public load balancer the status names (`CreateDialContext`)."""
        created = self.create_ingress(case, spec)
        ingress = await self.wait_ingress_ready(created["metadata"]["name"])
        return ingress, self.client_for(ingress, tls=tls)

    async def update_ingress_ready(self, name: str, spec: Spec) -> dict[str, Any]:
        """`UpdateIngressReady`: replace the spec (generation moves on), wait for Ready."""
        current = self.get_ingress(name)
        self.api.put({**current, "spec": copy.deepcopy(spec)})
        return await self.wait_ingress_ready(name)

    def client_for(
        self, ingress: Mapping[str, Any], *, tls: ssl.SSLContext | None = None
    ) -> GatewayClient:
        """`CreateDialContext`: the public load balancer's `domainInternal`, dialled at the
        URL's port. Fails as Go does when the status names no public load balancer."""
        lbs = ((ingress.get("status") or {}).get("publicLoadBalancer") or {}).get("ingress")
        assert lbs, "Ingress does not have a public load balancer assigned."
        domain = lbs[0].get("domainInternal", "")
        assert domain, f"No domainInternal on the public load balancer: {lbs[0]}"
        client = GatewayClient(
            self.load_balancers.ports(domain),
            tls=tls,
            user_agent=f"knative.dev/conformance/{ingress['metadata']['name']}",
        )
        self._stack.push_async_callback(client.close)
        return client


def private_domain(ingress: Mapping[str, Any]) -> str:
    """`ing.Status.PrivateLoadBalancer.Ingress[0].DomainInternal`."""
    lbs = ((ingress.get("status") or {}).get("privateLoadBalancer") or {}).get("ingress")
    assert lbs, f"Ingress has no private load balancer: {ingress.get('status')}"
    domain = lbs[0].get("domainInternal", "")
    assert domain, f"No domainInternal on the private load balancer: {lbs[0]}"
    return domain
