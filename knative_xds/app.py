"""The control plane assembled: resolver → translator → cache → ADS server, fed by a source.

`ControlPlane` owns the parts and is the `Sink` every source feeds;
`ControlPlane.run(source, ready)` runs the pipeline and one source (a watched
YAML folder, a cluster, `up`'s local one) until cancelled. The caller owns the
task group and decides when to stop, and when to start serving xDS: a stream
is sent nothing before the first complete state is loaded anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from .admin.metrics import Metrics
from .cache import SnapshotCache
from .model import ActivatorMode, Problem, Resolver
from .model.kinds import DEFAULT_INGRESS_CLASS
from .pipeline import Applied, Pipeline
from .server import AdsServer, start
from .sources.base import Changes, Source, SourceEvent
from .translate import GatewayConfig, Translator

if TYPE_CHECKING:
    from .server.tls import TlsFiles
    from .status.reporter import KubeApi, ReporterSettings, StatusReporter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    activator_mode: ActivatorMode = ActivatorMode.AT_ZERO
    follow_public_endpoints: bool = False
    # KIngresses are reconciled only when their ingress.class annotation names this.
    ingress_class: str = DEFAULT_INGRESS_CLASS
    # A first state with no Route or KIngress publishes nothing until one appears (an
    # empty or half-written folder must not wipe a connected gateway); see Pipeline.
    hold_empty_start: bool = True


class ControlPlane:
    def __init__(self, settings: Settings = Settings()) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        self.resolver = Resolver(
            activator_mode=settings.activator_mode,
            follow_public_endpoints=settings.follow_public_endpoints,
            ingress_class=settings.ingress_class,
        )
        self.translator = Translator(settings.gateway)
        self.pipeline = Pipeline(
            resolver=self.resolver,
            translator=self.translator,
            cache=self.cache,
            hold_empty_start=settings.hold_empty_start,
        )
        self.ads = AdsServer(self.cache)
        # Prometheus metrics (its own registry, so planes in one process count apart).
        self.metrics = Metrics(self)
        self.ads.observe(self.metrics)
        self.pipeline.on_applied.append(self.metrics.on_applied)
        self.pipeline.on_source.append(self.metrics.on_source)
        # Set once a first state is published (a refused first snapshot is not loaded;
        # a first state that serves nothing is published, and loaded, with its first
        # ingress).
        self.loaded = asyncio.Event()
        self.pipeline.on_applied.append(self._published)
        # KIngress status (serve --kubernetes with KIngress input), for /debug/status.
        self.reporter: StatusReporter | None = None
        # What the first load did: its state and problems (`validate` and `up` print them).
        self.first_load: Applied | None = None
        self._grpc: grpc.aio.Server | None = None

    async def run(self, source: Source, ready: asyncio.Event | None = None) -> None:
        """Feed the pipeline from `source` and apply what it sends, until cancelled.

        `ready` is set once the source's first complete state is loaded.
        """
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.pipeline.run(), name="pipeline")
            tasks.create_task(source.run(self, ready or asyncio.Event()), name="source")
            if self.reporter is not None:
                tasks.create_task(self.reporter.run(), name="kingress status")

    def report_status(self, api: KubeApi | None, settings: ReporterSettings | None = None) -> None:
        """Write the status of the KIngresses served (serve --kubernetes) through `api`,
        from the next `run` on: Ready once every connected gateway has accepted them.
        Without an `api` (files), readiness is tracked for /debug/status only."""
        from .status.reporter import ReporterSettings, StatusReporter
        from .status.writer import WriterSettings

        writer = WriterSettings(ingress_class=self.settings.ingress_class)
        self.reporter = StatusReporter(
            ads=self.ads,
            cache=self.cache,
            translator=self.translator,
            state=lambda: self.resolver.state,
            problems=self.problems,
            api=api,
            settings=settings or ReporterSettings(writer=writer),
        )
        reporter = self.reporter
        self.pipeline.on_applied.append(lambda a: reporter.applied(a.update.changed_ingresses))

    async def start_xds(self, address: str, tls: TlsFiles | None = None) -> int:
        """Listen for Envoys; a stream is sent nothing until the first state is loaded."""
        self._grpc, port = await start(self.ads, address, tls)
        log.info(
            "xDS (ADS, SotW and Delta; CSDS) listening on %s%s",
            address.rsplit(":", 1)[0] + f":{port}",
            "" if tls is None else " over TLS" + (" with client certificates" if tls.ca else ""),
        )
        return port

    async def stop(self, grace: float = 1.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)

    # -- the Sink sources feed ---------------------------------------------------------

    def stage(self, changes: Changes) -> None:
        """Take in a part of the first state; `load` publishes it all."""
        self.pipeline.stage(changes)

    async def load(self, changes: Changes | None = None) -> Applied:
        """Publish the first state (in steps: see `Pipeline.load`); `loaded` once it is whole."""
        applied = await self.pipeline.load(changes)
        if self.first_load is None:
            self.first_load = applied
            state = applied.update.state
            log.info(
                "first state: %d ingresses served (Routes and KIngresses), %d backends, "
                "%d problems, in %.0f ms",
                len(state.ingresses),
                len(state.backends),
                len(self.pipeline.problems()),
                applied.seconds * 1000,
            )
        if applied.snapshot is not None:
            self.loaded.set()
        return applied

    def _published(self, applied: Applied) -> None:
        if applied.snapshot is not None:
            self.loaded.set()

    def submit(self, changes: Changes) -> None:
        self.pipeline.submit(changes)

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None:
        self.pipeline.set_source_problems(scope, problems)

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        self.pipeline.source_health(scope, healthy, detail)

    def source_event(self, event: SourceEvent) -> None:
        self.pipeline.source_event(event)

    def problems(self) -> list[Problem]:
        return self.pipeline.problems()
