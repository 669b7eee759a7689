"""A real gateway on loopback: knative-xds on a watched folder, the bundled Envoy, echo apps.

Ports are chosen at run time. Every wait is bounded; nothing leaves this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import socket
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from knative_xds import synth
from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import (
    EnvoyStats,
    admin_get,
    bootstrap_yaml,
    start_envoy,
    stop_process,
    wait_ready,
)
from knative_xds.local.echo import bound_port, serve_echo
from knative_xds.sources.file import FileSource
from knative_xds.translate import GatewayConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    revision: str | None
    headers: dict[str, str]


def request(port: int, host: str, *, headers: dict[str, str] | None = None, conn=None) -> Reply:
    """One GET through the gateway (blocking: run it in a thread)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/", headers={"Host": host, **(headers or {})})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            return Reply(r.status, None, {})
        data = json.loads(body)
        return Reply(200, data["revision"], data["headers"])
    finally:
        if own:
            c.close()


def tally(port: int, host: str, n: int) -> Counter:
    """n requests over one keep-alive connection; counts by revision (or status on failure)."""
    counts: Counter = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            r = request(port, host, conn=conn)
            counts[r.revision or r.status] += 1
    finally:
        conn.close()
    return counts


@dataclass
class Gateway:
    workdir: Path
    delta: bool = False
    stats: EnvoyStats = EnvoyStats.GATEWAY
    plane: ControlPlane | None = None
    apps: dict[str, asyncio.Server] = field(default_factory=dict)
    external: int = 0
    internal: int = 0
    tls: int = 0  # external-tls, for KIngresses with spec.tls
    internal_tls: int = 0  # internal-tls, with config-xds cluster-cert-secret
    admin: int = 0
    _envoy: asyncio.subprocess.Process | None = None
    _follow: asyncio.Task | None = None

    @property
    def config_dir(self) -> Path:
        return self.workdir / "knative"

    async def app(self, name: str) -> int:
        """Start an echo app that answers as `name`; return its port."""
        server = await serve_echo(name)
        self.apps[name] = server
        return bound_port(server)

    async def ready_revisions(self, *names: str) -> list[dict]:
        """Per name: an echo app answering as it, its Revision, and a ready EndpointSlice."""
        objects: list[dict] = []
        for i, name in enumerate(names):
            port = await self.app(name)
            objects += [
                synth.revision(name),
                synth.endpoint_slice(name, ["127.0.0.1"], port, suffix=f"s{i}"),
            ]
        return objects

    def write(self, objects: Iterable[dict], filename: str = "objects.yaml") -> None:
        """Replace one file atomically, as an editor that saves by rename would."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_dir / f".{filename}.tmp"
        tmp.write_text(synth.dump(objects))
        os.replace(tmp, self.config_dir / filename)

    async def start(self, objects: Iterable[dict]) -> None:
        self.write(objects)
        self.external, self.internal, self.admin = free_port(), free_port(), free_port()
        self.tls, self.internal_tls = free_port(), free_port()
        self.plane = ControlPlane(
            Settings(
                gateway=GatewayConfig(
                    "127.0.0.1",
                    self.external,
                    self.internal,
                    external_tls_port=self.tls,
                    internal_tls_port=self.internal_tls,
                )
            )
        )
        # As `serve --config` does: KIngresses from files have their readiness tracked.
        self.plane.report_status(None)
        loaded = asyncio.Event()
        self._follow = asyncio.create_task(self.plane.run(FileSource(self.config_dir), loaded))
        await self.wait_until(
            lambda: loaded.is_set() or self._follow.done(), what="the first state", timeout=60
        )
        if self._follow.done():
            self._follow.result()  # the source could not start: its error
        xds = await self.plane.start_xds("127.0.0.1:0")
        boot = self.workdir / "envoy.yaml"
        boot.write_text(
            bootstrap_yaml(
                xds_host="127.0.0.1",
                xds_port=xds,
                admin_port=self.admin,
                delta=self.delta,
                stats=self.stats,
            )
        )
        self._envoy = await start_envoy(boot, log_path=self.workdir / "envoy.log")
        await wait_ready(self.admin, self._envoy)
        await self.wait_until(lambda: self._listening(), what="Envoy's listeners to accept")

    @property
    def envoy_pid(self) -> int | None:
        return self._envoy.pid if self._envoy is not None else None

    def envoy_output(self) -> str:
        """What Envoy wrote so far to stdout (access logs) and stderr (its log), as one text."""
        path = self.workdir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _listening(self) -> bool:
        for port in (self.external, self.internal):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                continue
            return False
        return True

    async def get(self, host: str, *, internal: bool = False, **kw) -> Reply:
        port = self.internal if internal else self.external
        return await asyncio.to_thread(request, port, host, **kw)

    async def tally(self, host: str, n: int, *, internal: bool = False) -> Counter:
        port = self.internal if internal else self.external
        return await asyncio.to_thread(tally, port, host, n)

    async def wait_until(
        self, check: Callable[[], object], *, what: str, timeout: float = 15
    ) -> None:
        """Poll `check` (sync or async) until truthy; fail naming `what` after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = check()
                    if asyncio.iscoroutine(result):
                        result = await result
                    if result:
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    async def wait_served(self, host: str, revision: str, *, internal: bool = False) -> None:
        async def served() -> bool:
            return (await self.get(host, internal=internal)).revision == revision

        await self.wait_until(served, what=f"{host} to reach {revision}")

    def envoy_stat(self, name: str) -> int:
        return self.envoy_stats(f"^{re.escape(name)}$").get(name, 0)

    def envoy_stats(self, pattern: str) -> dict[str, int]:
        """Envoy's counters and gauges whose names match `pattern` (a regex), by name."""
        text = admin_get(self.admin, f"/stats?filter={urllib.parse.quote(pattern)}")
        stats = {}
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if value.isdigit():
                stats[key] = int(value)
        return stats

    async def close(self) -> None:
        if self._envoy is not None:
            await stop_process(self._envoy)
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self.plane is not None:
            await self.plane.stop(0)
        for server in self.apps.values():
            server.close()
