"""sources → model → translate → cache: applies batches of object changes, coalesced.

Sources `submit` changes as they see them; one task applies them. A change that
finds the pipeline idle is applied at once (no debounce window); those that
arrive while a batch is being applied are merged into the next batch. Later
changes to the same object replace earlier ones, so a burst of edits ends on
the final state without a queue of intermediate ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .bulk import bulk_allocation
from .cache import InconsistentSnapshot, Snapshot, SnapshotCache
from .model import Problem, RawObject, Resolver, State, Update
from .model.kinds import Ident
from .resources import CLUSTER, ENDPOINT, PUSH_ORDER, SECRET
from .sources.base import ScopeHealth, SourceEvent
from .translate import Delta, Translator

log = logging.getLogger(__name__)

T = TypeVar("T")

# A batch this large is a first load or a relist, not an edit.
BULK_OBJECTS = 1000
# Routes translated between two turns of the event loop during a first load: about
# 20 ms of work, so streams are served while 5,000 Routes are built.
ROUTES_PER_STEP = 100
# Objects parsed and indexed between two turns of the event loop in a large batch after
# the first load (a relist after an outage): a few tens of ms of work.
OBJECTS_PER_STEP = 500


# A change that withdraws more than this share of the served ingresses is a warning.
MASS_WITHDRAWAL = 0.5
# Mass withdrawals kept on `Pipeline.withdrawals`, the last ones.
WITHDRAWALS_KEPT = 20


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One applied change that withdrew more than half of the served ingresses."""

    at: float  # time.time()
    removed: int  # ingresses (Routes and KIngresses) no longer served
    before: int  # ingresses served before the change


@dataclass(frozen=True, slots=True)
class Applied:
    update: Update
    snapshot: Snapshot | None
    seconds: float
    resources_changed: int
    # Set when this change withdrew more than half of the served ingresses.
    withdrawal: Withdrawal | None = None


class Pipeline:
    def __init__(
        self,
        *,
        resolver: Resolver,
        translator: Translator,
        cache: SnapshotCache,
        hold_empty_start: bool = True,
    ) -> None:
        self.resolver = resolver
        self.translator = translator
        self.cache = cache
        self._pending: dict[Ident, RawObject | None] = {}
        self._has_pending = asyncio.Event()
        self._source_problems: dict[str, list[Problem]] = {}
        self._reported: set[Problem] = set()
        # Held by a staged first load across its steps: submitted changes wait for it.
        self._loading = asyncio.Lock()
        # Told of every applied batch, after its snapshot is published (KIngress status
        # follows what each published snapshot carries to the gateways).
        self.on_applied: list[Callable[[Applied], None]] = []
        # What each source last said of each scope it reads (see `Sink.source_health`).
        self.health: dict[str, ScopeHealth] = {}
        # Told of every source health change and event (metrics watch here).
        self.on_source: list[Callable[[str, ScopeHealth | SourceEvent], None]] = []
        # The last changes that withdrew more than half of the served ingresses, oldest
        # first (also on `Applied.withdrawal`): /debug/status and metrics show them.
        self.withdrawals: list[Withdrawal] = []
        # Translated while no ingress was ever served: published with the first one, so
        # a start on an empty folder publishes nothing and a connected gateway keeps
        # what it has.
        self._held: Delta | None = None
        # Off for a cluster: an empty list from the API server is the truth (a fresh
        # install has no KIngress yet), and the gateway must get its listeners.
        self._hold_empty_start = hold_empty_start

    # -- problems ----------------------------------------------------------------------

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None:
        """Problems a source found in one scope (a file), replacing that scope's earlier ones."""
        # Only scopes with problems are kept: with 25,000 clean files, every report would
        # otherwise walk 25,000 empty lists.
        if found := list(problems):
            self._source_problems[scope] = found
        else:
            self._source_problems.pop(scope, None)

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        last = self.health.get(scope)
        synced = time.time() if healthy else (last.last_sync if last else None)
        state = ScopeHealth(healthy=healthy, detail=detail, last_sync=synced)
        if last is None or last.healthy != healthy:
            if healthy:
                if last is not None:
                    log.info("source %s is readable again", scope)
            else:
                log.warning("source %s: %s (the last good state keeps serving)", scope, detail)
        self.health[scope] = state
        for listener in self.on_source:
            listener(scope, state)

    def source_event(self, event: SourceEvent) -> None:
        for listener in self.on_source:
            listener("", event)

    def sources_healthy(self) -> bool:
        return all(h.healthy for h in self.health.values())

    def problems(self) -> list[Problem]:
        found = {p for ps in self._source_problems.values() for p in ps}
        found.update(self.resolver.problems())
        return sorted(found)

    def _report(self) -> None:
        now = set(self.problems())
        from_sources = {p for ps in self._source_problems.values() for p in ps}
        for p in sorted(now - self._reported):
            # A source's problem says itself what is served instead (it alone knows).
            note = "" if p in from_sources else " (its last good version, if any, keeps serving)"
            log.error("%s%s", p, note)
        for p in sorted(self._reported - now):
            log.info("fixed: %s", p)
        self._reported = now

    # -- applying ---------------------------------------------------------------------

    def apply(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        """Resolve, translate and publish now: every change after the first load."""
        started = time.perf_counter()
        bulk = bulk_allocation() if len(changes) >= BULK_OBJECTS else contextlib.nullcontext()
        before = self.resolver.state
        with bulk:
            update = self.resolver.apply(changes)
            delta = self.translator.translate(update)
            snapshot = self._publish_or_hold(delta, update)
        return self._done(started, before, update, snapshot, delta)

    async def apply_in_steps(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        """`apply` for a large batch after the first load (a relist after an outage), with
        the event loop let in between steps so that streams are served meanwhile.

        Nothing is published until the end, and then once: a half-applied state could
        send a route before its cluster. The caller holds `_loading`, so changes
        submitted meanwhile wait for the next batch.
        """
        started = time.perf_counter()
        before = self.resolver.state
        items = list(changes.items())
        with bulk_allocation():
            for at in range(0, len(items), OBJECTS_PER_STEP):
                self.resolver.stage(dict(items[at : at + OBJECTS_PER_STEP]))
                await asyncio.sleep(0)
            update = await _stepped(self.resolver.resolve_in_steps(per_step=ROUTES_PER_STEP))
            delta = self.translator.translate_backends(update)
            await self._translate_ingresses_in_steps(update, delta)
            snapshot = self._publish_or_hold(delta, update)
        return self._done(started, before, update, snapshot, delta)

    def _done(
        self,
        started: float,
        before: State,
        update: Update,
        snapshot: Snapshot | None,
        delta: Delta,
    ) -> Applied:
        self._report()
        seconds = time.perf_counter() - started
        withdrawal = self._withdrawal(before.ingresses, update)
        return self._applied(Applied(update, snapshot, seconds, delta.count(), withdrawal))

    async def _translate_ingresses_in_steps(self, update: Update, into: Delta) -> None:
        """The route tables and scopes of the changed Ingresses, ROUTES_PER_STEP at a time
        with the event loop let in between."""
        keys = sorted(update.changed_ingresses)
        # At least one call, with no key when none changed: it builds the listeners (the
        # first time, or for new gateway options).
        for at in range(0, max(len(keys), 1), ROUTES_PER_STEP):
            self.translator.translate_ingresses(update, keys[at : at + ROUTES_PER_STEP], into)
            await asyncio.sleep(0)

    async def _apply_batch(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        """A batch after the first load: a large one in steps, an edit at once."""
        if len(changes) >= BULK_OBJECTS:
            return await self.apply_in_steps(changes)
        return self.apply(changes)

    def _publish_or_hold(self, delta: Delta, update: Update) -> Snapshot | None:
        if self._held is not None:  # a first load that served nothing: still nothing?
            delta = _merged(self._held, delta)
            if not update.state.ingresses:
                self._held = delta
                return None
            self._held = None
        return self._publish(delta)

    def _withdrawal(self, served: Mapping[object, object], update: Update) -> Withdrawal | None:
        now = update.state.ingresses
        removed = sum(1 for k in update.changed_ingresses if k in served and k not in now)
        if not served or removed <= len(served) * MASS_WITHDRAWAL:
            return None
        log.warning(
            "a change withdrew %d of the %d served ingresses (Routes and KIngresses); "
            "%d remain served",
            removed,
            len(served),
            len(now),
        )
        event = Withdrawal(at=time.time(), removed=removed, before=len(served))
        self.withdrawals = [*self.withdrawals[-(WITHDRAWALS_KEPT - 1) :], event]
        return event

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
            if self.cache.current() is not None or self._held is not None:
                return await self._apply_batch(changes)
            return await self._load_staged(changes)

    async def _load_staged(self, changes: Mapping[Ident, RawObject | None]) -> Applied:
        started = time.perf_counter()
        with bulk_allocation():
            update = self.resolver.apply(changes)
            if not update.state.ingresses and self._hold_empty_start:
                # Nothing to serve: publishing it would wipe a connected gateway.
                log.warning(
                    "the first state serves no Route or KIngress: nothing is published "
                    "until one appears (a connected gateway keeps its config)"
                )
                delta = self.translator.translate(update)
                self._held = delta
                self._report()
                seconds = time.perf_counter() - started
                return self._applied(Applied(update, None, seconds, delta.count()))
            first = self.translator.translate_backends(update)
            self._publish(first, loaded=(CLUSTER, ENDPOINT, SECRET))
            await asyncio.sleep(0)
            rest = Delta()
            await self._translate_ingresses_in_steps(update, rest)
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
        """Apply submitted changes forever: at once when idle; those that arrive while a
        batch is applied (or the first load runs) make the next batch."""
        while True:
            await self._has_pending.wait()
            async with self._loading:
                batch, self._pending = self._pending, {}
                self._has_pending.clear()
                applied = await self._apply_batch(batch)
            if applied.snapshot is not None:
                log.info(
                    "published snapshot %s: %d objects changed, %d resources, in %.1f ms",
                    applied.snapshot.serial,
                    len(batch),
                    applied.resources_changed,
                    applied.seconds * 1000,
                )


async def _stepped(steps: Generator[None, None, T]) -> T:
    """Run `steps` to its end, letting the event loop in at each pause; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def _merged(first: Delta, then: Delta) -> Delta:
    """`first`, then `then`: for each resource the later word."""
    out = Delta({t: dict(named) for t, named in first.changes.items()})
    for type_url, named in then.changes.items():
        out.changes.setdefault(type_url, {}).update(named)
    return out
