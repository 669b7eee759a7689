"""Through the real Envoy: a config file truncated in place (`: > objects.yaml`) is not an
outage, and a control plane restarted on a file that no longer parses keeps serving it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from knative_xds import synth
from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import bootstrap_yaml, start_envoy, wait_ready
from knative_xds.sources.file import FileSource
from knative_xds.translate import GatewayConfig

from .gateway import Gateway, free_port

HOST = "web.default.example.com"
MARKER = "marker.default.example.com"


class RestartableGateway(Gateway):
    """The e2e gateway whose control plane keeps a state folder and can be restarted on
    the same ADS port, with Envoy left running."""

    xds_port: int = 0
    empty_grace: float = 2.0

    def _source(self) -> FileSource:
        state = self.workdir / "state"
        return FileSource(self.config_dir, state_dir=state, empty_grace=self.empty_grace)

    async def _run_plane(self, address: str) -> int:
        self.plane = ControlPlane(
            Settings(gateway=GatewayConfig("127.0.0.1", self.external, self.internal))
        )
        loaded = asyncio.Event()
        self._follow = asyncio.create_task(self.plane.run(self._source(), loaded))
        await self.wait_until(lambda: loaded.is_set(), what="the first state", timeout=60)
        return await self.plane.start_xds(address)

    async def start(self, objects: Iterable[dict]) -> None:  # type: ignore[override]
        self.write(objects)
        self.external, self.internal, self.admin = free_port(), free_port(), free_port()
        self.xds_port = await self._run_plane("127.0.0.1:0")
        boot = self.workdir / "envoy.yaml"
        boot.write_text(
            bootstrap_yaml(xds_host="127.0.0.1", xds_port=self.xds_port, admin_port=self.admin)
        )
        self._envoy = await start_envoy(boot, log_path=self.workdir / "envoy.log")
        await wait_ready(self.admin, self._envoy)
        await self.wait_until(self._listening, what="Envoy's listeners to accept")

    async def restart_plane(self) -> None:
        """Stop the control plane (Envoy keeps what it has) and start a new process's worth."""
        assert self._follow is not None and self.plane is not None
        self._follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._follow
        await self.plane.stop(0)
        await self._run_plane(f"127.0.0.1:{self.xds_port}")


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RestartableGateway]:
    gateway = RestartableGateway(tmp_path)
    yield gateway
    await gateway.close()


async def _objects(gw: RestartableGateway, name: str) -> list[dict]:
    return [
        synth.route(name, [synth.target(f"{name}-1", 100)]),
        *await gw.ready_revisions(f"{name}-1"),
    ]


async def test_a_file_truncated_in_place_does_not_404_while_it_is_written(
    gw: RestartableGateway,
) -> None:
    gw.empty_grace = 60  # longer than this test: the truncation alone never withdraws
    await gw.start(await _objects(gw, "web"))
    await gw.wait_served(HOST, "web-1")

    (gw.config_dir / "objects.yaml").write_text("")  # `: > objects.yaml`
    # A second change after it; once Envoy serves it, the truncation has been read too.
    gw.write(await _objects(gw, "marker"), "marker.yaml")
    await gw.wait_served(MARKER, "marker-1")

    assert await gw.tally(HOST, 20) == {"web-1": 20}


async def test_a_restarted_plane_serves_the_last_good_version_of_a_broken_file(
    gw: RestartableGateway,
) -> None:
    await gw.start(await _objects(gw, "web"))
    await gw.wait_served(HOST, "web-1")

    (gw.config_dir / "objects.yaml").write_text("kind: Route\nmetadata: [unclosed\n")
    await gw.restart_plane()
    assert gw.plane is not None
    assert any("serving its last good version" in str(p) for p in gw.plane.problems())

    # A change made after the restart, seen by Envoy: the new plane's state is in place.
    gw.write(await _objects(gw, "marker"), "marker.yaml")
    await gw.wait_served(MARKER, "marker-1")
    assert await gw.tally(HOST, 20) == {"web-1": 20}
