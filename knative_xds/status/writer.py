"""Writes KIngress status: what readiness and problems say, PATCHed only when it changes.

The writer runs only on the replica that holds the lease (lease.py). When it
starts it lists every KIngress once, to know the class and the status each
already has; from then on it knows what it wrote from the API server's
answers. An object it has not seen (created after the list) is read once
before its first write, so only objects of our class are ever written.

Keys to look at come from the readiness tracker's listeners and from `mark`
(the control plane marks a key whose problems changed). A set of workers, as
many as may be in flight, takes them one key at a time (a key is never
written by two workers at once, and one marked again while being written is
looked at again after), each request waiting on one shared token bucket. So
a thousand KIngresses turning Ready at once are written concurrently, within
a bounded rate. A failed write is retried after a backoff; 404 (the object is
gone) drops the key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from ..model.kinds import DEFAULT_INGRESS_CLASS, INGRESS, INGRESS_CLASS_ANNOTATION, NETWORKING
from ..model.types import ObjectKey
from ..sources.kube_http import object_path
from ..sources.kube_watch import ApiError, Collection
from .conditions import LoadBalancers, desired_status, rfc3339, same
from .readiness import Readiness

log = logging.getLogger(__name__)

INGRESSES = Collection(INGRESS, NETWORKING, "ingresses")


class StatusApi(Protocol):
    """What the writer needs of the API server (kube_http.HttpApi has it)."""

    async def list_page(
        self, collection: Collection, *, limit: int, continue_token: str | None
    ) -> Mapping[str, Any]: ...

    async def get(self, path: str) -> Mapping[str, Any]: ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Mapping[str, Any]: ...


class ReadinessView(Protocol):
    """What the writer reads of the tracker (readiness.ReadinessTracker has it)."""

    def readiness(self, key: ObjectKey) -> Readiness | None: ...

    def keys(self) -> Iterable[ObjectKey]: ...

    def listen(self, listener: Callable[[ObjectKey], None]) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class WriterSettings:
    ingress_class: str = DEFAULT_INGRESS_CLASS
    balancers: LoadBalancers = field(default_factory=LoadBalancers)
    # client-go's defaults are far lower (5/s); a status write is small and the API
    # server's priority and fairness guards it, and conformance waits on these writes.
    rate: float = 100.0  # requests per second, sustained
    burst: int = 200
    in_flight: int = 16
    retry_first: float = 0.5  # seconds; doubles per failure of one key, jittered
    retry_cap: float = 30.0
    list_limit: int = 500


class TokenBucket:
    """At most `burst` at once, then `rate` per second; waiters are served in order."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()
        self._turn = asyncio.Lock()  # FIFO: the first to wait is the first served

    async def take(self) -> None:
        async with self._turn:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


@dataclass(frozen=True, slots=True)
class _Known:
    """One KIngress as the API server last showed it: its class, generation and status."""

    ingress_class: str
    generation: int
    status: Mapping[str, Any]


class _NotLeader(Exception):
    """The lease is no longer held: the request is not sent."""


class StatusWriter:
    def __init__(
        self,
        api: StatusApi,
        readiness: ReadinessView,
        *,
        problem_of: Callable[[ObjectKey], str | None] = lambda key: None,
        settings: WriterSettings = WriterSettings(),
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._readiness = readiness
        self._problem_of = problem_of
        self._settings = settings
        self._may_write = may_write
        self._clock = clock
        self._running = False
        self._known: dict[ObjectKey, _Known] = {}
        self._queue: asyncio.Queue[ObjectKey] = asyncio.Queue()
        self._queued: set[ObjectKey] = set()
        self._busy: set[ObjectKey] = set()
        self._again: set[ObjectKey] = set()
        self._failures: dict[ObjectKey, int] = {}
        self._timers: dict[ObjectKey, asyncio.TimerHandle] = {}
        self.written = 0  # status PATCHes the API server accepted

    # -- what others call ---------------------------------------------------------------

    def mark(self, keys: Iterable[ObjectKey]) -> None:
        """Look at these keys again (their problems changed); nothing while not leading."""
        if self._running:
            for key in keys:
                self._enqueue(key)

    async def run(self) -> NoReturn:
        """Write status until cancelled (the lease lost, or shutdown)."""
        bucket = TokenBucket(self._settings.rate, self._settings.burst)
        stop_listening = self._readiness.listen(self._enqueue)
        self._running = True
        try:
            try:
                await self._list(bucket)
            except _NotLeader:
                # The lease ran out by the clock before the elector noticed: it is about
                # to cancel this task. Nothing more is sent meanwhile.
                await asyncio.Event().wait()
            self.mark(self._readiness.keys())
            # Ours but unknown to readiness: only a problem can be written for them.
            self.mark(k for k, v in self._known.items() if self._ours(v))
            async with asyncio.TaskGroup() as workers:
                for _ in range(self._settings.in_flight):
                    workers.create_task(self._work(bucket))
        finally:
            self._running = False
            stop_listening()
            for timer in self._timers.values():
                timer.cancel()
            self._reset()
        raise AssertionError("unreachable: the workers run until cancelled")

    def _reset(self) -> None:
        # A later term starts from a fresh list: another replica may have written meanwhile.
        self._known.clear()
        self._queue = asyncio.Queue()
        self._queued.clear()
        self._busy.clear()
        self._again.clear()
        self._failures.clear()
        self._timers.clear()

    # -- the queue ----------------------------------------------------------------------

    def _enqueue(self, key: ObjectKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()  # looked at now: the retry it waited for is this
        if key in self._busy:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _work(self, bucket: TokenBucket) -> NoReturn:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._busy.add(key)
            try:
                await self._sync(key, bucket)
            finally:
                self._busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self._enqueue(key)

    # -- one key ------------------------------------------------------------------------

    async def _sync(self, key: ObjectKey, bucket: TokenBucket) -> None:
        readiness, problem = self._readiness.readiness(key), self._problem_of(key)
        if readiness is None and problem is None:
            self._known.pop(key, None)  # deleted, or not ours: nothing to say
            return
        path = object_path(NETWORKING, INGRESSES.plural, key.namespace, key.name)
        try:
            known = self._known.get(key)
            if known is None or problem is not None:
                # Unknown: its class is checked before anything is written. A problem is
                # reported on the generation that has it, which the model may not hold:
                # read the object for it (problems are few, and change seldom).
                known = self._remember(key, await self._send(bucket, self._api.get, path))
            if not self._ours(known):
                log.debug("%s has class %r: not ours, not written", key, known.ingress_class)
                # Read again next time: its annotation may have changed since.
                self._known.pop(key, None)
                return
            generation = readiness.generation if readiness else 0
            if problem is not None:
                generation = max(generation, known.generation)
            desired = desired_status(
                readiness,
                problem,
                generation=generation,
                balancers=self._settings.balancers,
                previous=known.status,
                now=rfc3339(self._clock()),
            )
            if same(desired, known.status):
                self._failures.pop(key, None)
                return
            patch = {"status": desired}
            answer = await self._send(bucket, self._api.merge_patch, path + "/status", patch)
        except _NotLeader:
            return
        except ApiError as e:
            if e.status == 404:
                log.debug("%s is gone; its status is not written", key)
                self._known.pop(key, None)
                self._failures.pop(key, None)
            else:
                self._retry(key, e)
            return
        self.written += 1
        self._failures.pop(key, None)
        now = self._remember(key, answer)
        if problem is not None and now.generation > generation:
            self._enqueue(key)  # a newer generation has it now: say so on that one

    async def _send(
        self, bucket: TokenBucket, call: Callable[..., Awaitable[Mapping[str, Any]]], *args: Any
    ) -> Mapping[str, Any]:
        await bucket.take()
        # Checked after the wait: the lease may have been lost while this one queued.
        if not self._may_write():
            raise _NotLeader
        return await call(*args)

    def _retry(self, key: ObjectKey, error: ApiError) -> None:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._settings.retry_cap, self._settings.retry_first * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.0)
        log.warning("status of %s not written (%s); retrying in %.1f s", key, error, delay)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._enqueue, key)

    # -- what the API server holds ------------------------------------------------------

    async def _list(self, bucket: TokenBucket) -> None:
        """Every KIngress's class and status, page by page; retried until it succeeds."""
        failures = 0
        while True:
            try:
                token: str | None = None
                while True:
                    page = await self._send(
                        bucket,
                        lambda t: self._api.list_page(
                            INGRESSES, limit=self._settings.list_limit, continue_token=t
                        ),
                        token,
                    )
                    for item in page.get("items") or ():
                        meta = item.get("metadata") or {}
                        self._remember(ObjectKey(meta["namespace"], meta["name"]), item)
                    token = (page.get("metadata") or {}).get("continue") or None
                    if token is None:
                        return
            except ApiError as e:
                failures += 1
                self._known.clear()
                delay = min(self._settings.retry_cap, self._settings.retry_first * 2**failures)
                log.warning("cannot list KIngresses (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _remember(self, key: ObjectKey, obj: Mapping[str, Any]) -> _Known:
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        ingress_class = str(annotations.get(INGRESS_CLASS_ANNOTATION, ""))
        # Another class's status is never compared: keep none of it.
        ours = ingress_class == self._settings.ingress_class
        known = _Known(
            ingress_class,
            int(meta.get("generation") or 0),
            dict(obj.get("status") or {}) if ours else {},
        )
        self._known[key] = known
        return known

    def _ours(self, known: _Known) -> bool:
        return known.ingress_class == self._settings.ingress_class
