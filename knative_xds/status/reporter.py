"""KIngress status for `serve --kubernetes`: readiness, the writer and the lease, wired.

One `StatusReporter` per control plane. Every replica tracks readiness (it
watches its own ADS streams); only the Lease holder writes. After each
published snapshot it tells the tracker which KIngresses the snapshot carries
and through which resources (`translator.owned`), looking only at KIngresses
whose model value changed, those still pending, and those the translator had
not yet caught up with; and it marks for the writer the KIngresses whose
problems changed (problems can change with no snapshot: a bad edit keeps the
last good version serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from ..cache import ConfigCache, Snapshot
from ..model.kinds import INGRESS
from ..model.types import Ingress, ObjectKey, Problem, State
from ..resources import Resource
from ..server.ads import AdsServer
from .lease import Elector, LeaseApi, LeaseSettings
from .readiness import Carried, ReadinessTracker
from .writer import StatusApi, StatusWriter, WriterSettings

log = logging.getLogger(__name__)


class Owner(Protocol):
    """What the reporter needs of the translator."""

    def owned(self, key: ObjectKey) -> Mapping[tuple[str, str], Resource]: ...


class KubeApi(StatusApi, LeaseApi, Protocol):
    """The writer's and the elector's calls (kube_http.HttpApi has them all)."""


@dataclass(frozen=True, slots=True)
class ReporterSettings:
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    # Problems are read again at least this often (seconds), snapshot or not.
    problem_poll: float = 1.0


class StatusReporter:
    def __init__(
        self,
        *,
        ads: AdsServer,
        cache: ConfigCache,
        translator: Owner,
        state: Callable[[], State],
        problems: Callable[[], Iterable[Problem]],
        api: KubeApi | None,
        settings: ReporterSettings = ReporterSettings(),
    ) -> None:
        """`state` gives the model's current State, `problems` every current problem
        (KIngress ones are reported in status). Without an `api` (KIngresses from files)
        readiness is tracked for /debug/status and nothing is written. Nothing runs
        before `run`."""
        self._ads = ads
        self._cache = cache
        self._translator = translator
        self._state = state
        self._problems = problems
        self._settings = settings
        self.tracker = ReadinessTracker()
        self._problem_text: dict[ObjectKey, str] = {}
        self.elector: Elector | None = None
        self.writer: StatusWriter | None = None
        if api is not None:
            self.elector = Elector(api, settings.lease)
            self.writer = StatusWriter(
                api,
                self.tracker,
                problem_of=self._problem_text.get,
                settings=settings.writer,
                may_write=self.elector.leading,
            )
        # KIngresses as last reported, and those the translator had not caught up with.
        self._reported: dict[ObjectKey, Ingress] = {}
        self._deferred: set[ObjectKey] = set()
        self._serial = -1
        # The Ingresses applied batches changed since the last look (`applied`); None
        # until the pipeline tells us, and then every Ingress is compared instead.
        self._changed: set[ObjectKey] | None = None

    def applied(self, changed: Iterable[ObjectKey]) -> None:
        """The pipeline applied a batch that changed these Ingresses: a snapshot follows.

        Told this, a publish costs what it changed, not a look at every Ingress."""
        if self._changed is None:
            self._changed = set()
        self._changed.update(changed)

    async def run(self) -> NoReturn:
        """Track readiness and, while holding the Lease, write status; until cancelled."""
        for stream in list(self._ads.streams.values()):
            self.tracker.on_stream_open(stream.status)
        stop_observing = self._ads.observe(self.tracker)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow(), name="status-follow")
                if self.elector is not None:
                    tasks.create_task(self.elector.run(self._write), name="status-lease")
        finally:
            stop_observing()
        raise AssertionError("unreachable: both tasks run until cancelled")

    def summary(self) -> dict[str, Any]:
        """For /debug/status: who writes, and each KIngress's readiness."""
        elector, writer = self.elector, self.writer
        return {
            "identity": elector.identity if elector else None,
            "leader": elector.holder if elector else None,
            "leading": elector.leading() if elector else False,
            "written": writer.written if writer else 0,
            "kingresses": [
                {
                    "key": str(r.key),
                    "generation": r.generation,
                    "ready": r.ready,
                    "reason": r.reason,
                    "waiting_for_gateways": r.waiting_for,
                    "seconds_to_ready" if r.ready else "seconds_pending": round(r.seconds, 3),
                    "problem": self._problem_text.get(r.key),
                }
                for r in self.tracker.rows()
            ],
        }

    async def _write(self) -> NoReturn:
        # A bug in status writing must not take xDS serving down with it: log, start over.
        assert self.writer is not None
        while True:
            try:
                await self.writer.run()
            except Exception:
                log.exception("status writer failed; starting it again")
                await asyncio.sleep(self._settings.lease.retry_every)

    # -- following the control plane ----------------------------------------------------

    async def _follow(self) -> NoReturn:
        published = asyncio.Event()
        stop_watching = self._cache.watch(published)
        try:
            while True:
                published.clear()
                snapshot = self._cache.current()
                try:
                    if snapshot is not None and snapshot.serial != self._serial:
                        self._serial = snapshot.serial
                        self.published(snapshot, self._state())
                    self._read_problems()
                except Exception:
                    log.exception("KIngress readiness not updated for snapshot %s", self._serial)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.problem_poll):
                        await published.wait()
        finally:
            stop_watching()

    def published(self, snapshot: Snapshot, state: State) -> None:
        """Report what `snapshot` carries of the KIngresses in `state` to the tracker."""
        ingresses = state.ingresses
        look = set(self._deferred) | self.tracker.pending()
        if self._changed is None:  # not told what changed: look at every Ingress
            for key, ingress in ingresses.items():
                if ingress.kind == INGRESS and self._reported.get(key) is not ingress:
                    look.add(key)
            look.update(k for k in self._reported if k not in ingresses)
        else:
            look |= self._changed
            self._changed = set()
        carried: dict[ObjectKey, Carried] = {}
        self._deferred = set()
        for key in look:
            ingress = ingresses.get(key)
            if ingress is None or ingress.kind != INGRESS:
                self._reported.pop(key, None)
                continue
            owned = self._translator.owned(key)
            if not owned or not _published(owned, snapshot):
                # Translated after this snapshot (a staged first load, or a snapshot the
                # cache refused): its resources are not what gateways are sent yet.
                self._deferred.add(key)
                continue
            carried[key] = (ingress.generation, tuple(owned))
            self._reported[key] = ingress
        self.tracker.published(snapshot, carried, only=look - self._deferred)

    def _read_problems(self) -> None:
        now = {
            ObjectKey(*p.key.split("/", 1)): f"{p.field}: {p.message}" if p.field else p.message
            for p in self._problems()
            if p.kind == INGRESS and "/" in p.key
        }
        if now == self._problem_text:
            return
        changed = {
            k
            for k in now.keys() | self._problem_text.keys()
            if now.get(k) != self._problem_text.get(k)
        }
        self._problem_text.clear()
        self._problem_text.update(now)
        if self.writer is not None:
            self.writer.mark(changed)


def _published(owned: Mapping[tuple[str, str], Resource], snapshot: Snapshot) -> bool:
    for (type_url, name), resource in owned.items():
        held = snapshot.of(type_url).get(name)
        if held is None or held.version != resource.version:
            return False
    return True
