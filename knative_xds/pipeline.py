"""sources → model → translate → cache: applies batches of object changes, coalesced.

Sources `submit` changes as they see them; one task merges what arrives within
a short window (a few milliseconds, not Istio's 100 ms) and applies it. Later
changes to the same object replace earlier ones, so a burst of edits ends on
the final state without a queue of intermediate ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .bulk import bulk_allocation
from .cache import InconsistentSnapshot, Snapshot, SnapshotCache
from .model import Problem, RawObject, Resolver, Update
from .model.kinds import Ident
from .resources import CLUSTER, ENDPOINT, PUSH_ORDER, SECRET
from .translate import Delta, Translator

log = logging.getLogger(__name__)

# A batch this large is a first load or a relist, not an edit.
BULK_OBJECTS = 1000
# Routes translated between two turns of the event loop during a first load: about
# 20 ms of work, so streams are served while 5,000 Routes are built.
ROUTES_PER_STEP = 100


@dataclass(frozen=True, slots=True)
class Applied:
    update: Update
    snapshot: Snapshot | None
    seconds: float
    resources_changed: int


class Pipeline:
    def __init__(
        self,
        *,
        resolver: Resolver,
        translator: Translator,
        cache: SnapshotCache,
        window_ms: float = 3.0,
    ) -> None:
        self.resolver = resolver
        self.translator = translator
        self.cache = cache
        self._window = window_ms / 1000
        self._pending: dict[Ident, RawObject | None] = {}
        self._has_pending = asyncio.Event()
        self._source_problems: dict[str, list[Problem]] = {}
        self._reported: set[Problem] = set()
        # Held by a staged first load across its steps: submitted changes wait for it.
        self._loading = asyncio.Lock()
        # Told of every applied batch, after its snapshot is published (KIngress status
        # follows what each published snapshot carries to the gateways).
        self.on_applied: list[Callable[[Applied], None]] = []

    # -- problems ----------------------------------------------------------------------

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None:
        """Problems a source found in one scope (a file), replacing that scope's earlier ones."""
        self._source_problems[scope] = list(problems)

    def problems(self) -> list[Problem]:
        found = {p for ps in self._source_problems.values() for p in ps}
        found.update(self.resolver.problems())
        return sorted(found)

    def _report(self) -> None:
        now = set(self.problems())
        for p in sorted(now - self._reported):
            log.error("%s (the last good version keeps serving)", p)
        for p in sorted(self._reported - now):
            log.info("fixed: %s", p)
        self._reported = now

    # -- applying ---------------------------------------------------------------------

    def apply(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        """Resolve, translate and publish now: every change after the first load."""
        started = time.perf_counter()
        bulk = bulk_allocation() if len(changes) >= BULK_OBJECTS else contextlib.nullcontext()
        with bulk:
            update = self.resolver.apply(changes)
            delta = self.translator.translate(update)
            snapshot = self._publish(delta)
        self._report()
        return self._applied(
            Applied(update, snapshot, time.perf_counter() - started, delta.count())
        )

    def stage(self, changes: Mapping[Ident, RawObject | None]) -> None:
        """Take objects in for the next `load` (a first load arrives in parts)."""
        self.resolver.stage(changes)

    async def load(self, changes: Mapping[Ident, RawObject | None] | None = None) -> Applied:
        """The first load (what was staged, and `changes`), staged so that connected
        gateways get to work early.

        Clusters and endpoints go out first (Envoy takes seconds to warm 10,000
        of them), while the route tables and scopes are built, a chunk of Routes at
        a time with the event loop let in between so that streams are served. The
        listeners, scopes and tables then go out together, complete. With a state
        already published it is `apply`: a later staged push could drop a cluster
        before the routes that use it.
        """
        changes = changes or {}
        async with self._loading:
            if self.cache.current() is not None:
                return self.apply(changes)
            return await self._load_staged(changes)

    async def _load_staged(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        started = time.perf_counter()
        with bulk_allocation():
            update = self.resolver.apply(changes)
            first = self.translator.translate_backends(update)
            self._publish(first, loaded=(CLUSTER, ENDPOINT, SECRET))
            await asyncio.sleep(0)
            rest = Delta()
            keys = sorted(update.changed_ingresses)
            for at in range(0, len(keys), ROUTES_PER_STEP):
                self.translator.translate_ingresses(update, keys[at : at + ROUTES_PER_STEP], rest)
                await asyncio.sleep(0)
            snapshot = self._publish(rest)
        self._report()
        return self._applied(
            Applied(update, snapshot, time.perf_counter() - started, first.count() + rest.count())
        )

    def _applied(self, applied: Applied) -> Applied:
        for listener in self.on_applied:
            listener(applied)
        return applied

    def _publish(self, delta: Delta, loaded: Iterable[str] = PUSH_ORDER) -> Snapshot | None:
        try:
            return self.cache.apply(delta, loaded=loaded)
        except InconsistentSnapshot:
            log.exception(
                "refusing to publish an inconsistent snapshot; still serving the last one"
            )
            return None

    def submit(self, changes: Mapping[Ident, RawObject | None]) -> None:
        if changes:
            self._pending.update(changes)
            self._has_pending.set()
        else:
            self._report()

    async def run(self) -> None:
        """Apply submitted changes forever, coalescing those that arrive within the window."""
        while True:
            await self._has_pending.wait()
            await asyncio.sleep(self._window)
            async with self._loading:
                batch, self._pending = self._pending, {}
                self._has_pending.clear()
                applied = self.apply(batch)
            if applied.snapshot is not None:
                log.info(
                    "published snapshot %s: %d objects changed, %d resources, in %.1f ms",
                    applied.snapshot.serial,
                    len(batch),
                    applied.resources_changed,
                    applied.seconds * 1000,
                )
