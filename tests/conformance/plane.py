"""knative-xds as `serve --kubernetes` runs it, on the fake API, with the bundled Envoy.

Its load balancers are the gateway Envoy's listeners on 127.0.0.1; the status
writer names them by `domainInternal`, and `BalancerPorts` says which local
port serves which of their ports (80 and 443 on the public one, 80 on the
private one), as a cluster's DNS and Service ports would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kubernetes.aio.client import ApiClient, Configuration

from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import admin_get, bootstrap_yaml, start_envoy, stop_process, wait_ready
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS
from knative_xds.sources.kube import HttpApi, KubeSource
from knative_xds.sources.kube_watch import Backoff, WatchOptions
from knative_xds.status.conditions import LoadBalancers
from knative_xds.status.lease import LeaseSettings
from knative_xds.status.reporter import ReporterSettings
from knative_xds.status.writer import WriterSettings
from knative_xds.translate import GatewayConfig
from tests.fake_kube_api import FakeApiServer

T = TypeVar("T")
# Retries after an API error in milliseconds, so a hiccup costs the suite nothing.
WATCH = WatchOptions(backoff=Backoff(first=0.02, cap=0.2), watch_seconds=300)
ENVOY_READY_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True)
class BalancerPorts:
    """Per `domainInternal`, the local port behind each of its Service ports."""

    by_domain: Mapping[str, Mapping[int, int]]

    def ports(self, domain: str) -> Mapping[int, int]:
        found = self.by_domain.get(domain)
        assert found is not None, (
            f"no load balancer is called {domain!r} (known: {sorted(self.by_domain)})"
        )
        return found

    def port(self, domain: str, service_port: int) -> int:
        ports = self.ports(domain)
        assert service_port in ports, f"{domain} has no port {service_port}: {dict(ports)}"
        return ports[service_port]


@dataclass
class Plane:
    api: FakeApiServer
    workdir: Path
    external: int = field(default_factory=free_port)
    internal: int = field(default_factory=free_port)
    tls: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    control: ControlPlane | None = None
    _client: ApiClient | None = None
    _task: asyncio.Task[None] | None = None
    _envoy: asyncio.subprocess.Process | None = None

    @property
    def load_balancers(self) -> BalancerPorts:
        return BalancerPorts(
            {
                PUBLIC_DOMAIN: {80: self.external, 443: self.tls},
                PRIVATE_DOMAIN: {80: self.internal},
            }
        )

    async def start(self) -> None:
        gateway = GatewayConfig(
            listen_address="127.0.0.1",
            external_port=self.external,
            internal_port=self.internal,
            external_tls_port=self.tls,
        )
        self.control = ControlPlane(Settings(gateway=gateway, hold_empty_start=False))
        self._client = ApiClient(Configuration(host=self.api.url))
        api = HttpApi(self._client)
        # As `serve --kubernetes` wires it (commands/serve.py, _status_settings), with this machine's
        # load balancer names and a Lease short enough that the first term starts at once.
        self.control.report_status(api, status_settings())
        source = KubeSource(api, input="ingress", options=WATCH)
        xds = await self.control.start_xds("127.0.0.1:0")
        self._task = asyncio.create_task(self.control.run(source), name="control plane")
        boot = self.workdir / "envoy.yaml"
        boot.write_text(bootstrap_yaml(xds_host="127.0.0.1", xds_port=xds, admin_port=self.admin))
        self._envoy = await start_envoy(boot, log_path=self.workdir / "envoy.log")
        await wait_ready(self.admin, self._envoy, timeout=ENVOY_READY_SECONDS)

    async def guard(self, waiting: Awaitable[T]) -> T:
        """Await `waiting`, but fail at once, with its error, if the control plane ends."""
        assert self._task is not None
        job = asyncio.ensure_future(waiting)
        await asyncio.wait({job, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            error = None if self._task.cancelled() else self._task.exception()
            raise AssertionError(f"the control plane stopped: {error!r}") from error
        return job.result()

    async def config_dump(self) -> dict:
        """Envoy's `/config_dump` (with EDS), to say what the gateway was given."""
        text = await asyncio.to_thread(
            admin_get, self.admin, "/config_dump?include_eds", timeout=5.0
        )
        return json.loads(text)

    def envoy_log(self) -> str:
        path = self.workdir / "envoy.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def close(self) -> None:
        if self._envoy is not None:
            await stop_process(self._envoy)
        if self._task is not None:
            self._task.cancel()
            # Its error, if it died, was already raised by `guard` in the test it broke.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.control is not None:
            await self.control.stop(0)
        if self._client is not None:
            await self._client.close()


def status_settings() -> ReporterSettings:
    balancers = LoadBalancers(public=PUBLIC_DOMAIN, private=PRIVATE_DOMAIN)
    return ReporterSettings(
        lease=LeaseSettings(duration=2, renew_every=0.5, retry_every=0.2),
        writer=WriterSettings(ingress_class=DEFAULT_INGRESS_CLASS, balancers=balancers),
    )


PUBLIC_DOMAIN = "knative-xds-gateway.knative-xds.svc.cluster.local"
# A cluster's DNS resolves the private gateway Service's name; here it must resolve on
# this machine, because host-rewrite's ExternalName Service points at it and Envoy
# resolves such a name itself.
PRIVATE_DOMAIN = "localhost"
