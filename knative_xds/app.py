"""The control plane assembled: resolver → translator → cache → ADS server, fed by a source.

`ControlPlane` owns the parts; `serve_files` is the embedded default (a watched
YAML file or folder). The caller owns the task group and decides when to stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .cache import SnapshotCache
from .model import ActivatorMode, Problem, Resolver, Update
from .pipeline import Applied, Pipeline, bulk_allocation
from .server import AdsServer, start
from .sources.file import FileBatch, FileSource
from .translate import GatewayConfig, Translator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    activator_mode: ActivatorMode = ActivatorMode.AT_ZERO
    follow_public_endpoints: bool = False
    coalesce_ms: float = 3.0


class ControlPlane:
    def __init__(self, settings: Settings = Settings()) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        self.resolver = Resolver(
            activator_mode=settings.activator_mode,
            follow_public_endpoints=settings.follow_public_endpoints,
        )
        self.translator = Translator(settings.gateway)
        self.pipeline = Pipeline(
            resolver=self.resolver,
            translator=self.translator,
            cache=self.cache,
            window_ms=settings.coalesce_ms,
        )
        self.ads = AdsServer(self.cache)
        self.loaded = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None

    async def start_xds(self, address: str) -> int:
        """Listen for Envoys; a stream is sent nothing until the first state is loaded."""
        self._grpc, port = await start(self.ads, address)
        log.info(
            "xDS (ADS, SotW and Delta) listening on %s", address.rsplit(":", 1)[0] + f":{port}"
        )
        return port

    async def stop(self, grace: float = 1.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)

    def stage(self, batch: FileBatch) -> None:
        """Take in a part of the first state; `load` publishes it all."""
        self._set_problems(batch)
        self.pipeline.stage(batch.changes)

    async def load(self, batch: FileBatch | None = None) -> Applied:
        """Publish the first state (in steps: see `Pipeline.load`); `loaded` once it is whole."""
        if batch is not None:
            self.stage(batch)
        applied = await self.pipeline.load()
        if applied.snapshot is not None:  # a refused first snapshot is not "loaded"
            self.loaded.set()
        return applied

    def _set_problems(self, batch: FileBatch) -> None:
        for path, problems in batch.problems.items():
            self.pipeline.set_source_problems(str(path), problems)

    async def follow(
        self, source: FileSource, on_batch: Callable[[FileBatch], None] | None = None
    ) -> None:
        """Apply file edits as they happen; runs until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.pipeline.run())
            async for batch in source.watch():
                self._set_problems(batch)
                self.pipeline.submit(batch.changes)
                if on_batch is not None:
                    on_batch(batch)


@dataclass(frozen=True, slots=True)
class Loaded:
    update: Update
    problems: list[Problem]


async def load_files(plane: ControlPlane, path: Path) -> tuple[FileSource, Loaded]:
    """Read every file once, publish the first complete state, and say what was loaded."""
    source = FileSource(path)
    started = time.perf_counter()
    objects = 0
    with bulk_allocation():
        for part in source.read_in_parts():
            plane.stage(part)
            objects += len(part.changes)
        applied = await plane.load()
    state = applied.update.state
    log.info(
        "loaded %d objects from %s in %.0f ms: %d routes, %d revisions routed, %d problems",
        objects,
        path,
        (time.perf_counter() - started) * 1000,
        len(state.routes),
        len(state.revisions()),
        len(plane.pipeline.problems()),
    )
    return source, Loaded(applied.update, plane.pipeline.problems())
