"""Leader election over a coordination.k8s.io/v1 Lease: one replica writes status.

Every replica serves xDS and tracks readiness; only the Lease's holder runs
the status writer. As client-go's leader election does it: the holder renews
the Lease (`renewTime`) every few seconds; the others look every `retry_every`
and take it over once it has expired (`renewTime + leaseDurationSeconds`
passed) or when there is none. Every write carries the `resourceVersion` it
read, so of two replicas racing for one Lease the API server lets one win and
answers the other 409 Conflict.

The holder stops writing as soon as it cannot show it still holds the Lease:
`leading()` turns False `renew_deadline` after the last successful renewal,
by this process's monotonic clock, which is shorter than the lease duration,
so the writer has stopped before anyone else may take over. A renewal
answered 409 means someone else wrote the Lease: unless the Lease read back
still names us (our own earlier write whose answer was lost), leadership ends
at once. Taking over uses the times written in the Lease, so replicas' clocks
must agree to within `duration - renew_deadline` (5 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

from ..sources.kube_http import object_path
from ..sources.kube_watch import ApiError

log = logging.getLogger(__name__)

COORDINATION = "coordination.k8s.io/v1"


def default_identity() -> str:
    """The pod's name (set from the downward API), else the host name and a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    namespace: str = "knative-xds"
    name: str = "knative-xds-status"
    identity: str = ""  # "" → default_identity()
    duration: float = 15.0  # written as whole seconds (leaseDurationSeconds), at least 1
    renew_every: float = 5.0
    retry_every: float = 2.0
    # How long the holder goes on without a successful renewal; 0 → two thirds of `duration`.
    renew_deadline: float = 0.0

    @property
    def deadline(self) -> float:
        return self.renew_deadline or self.duration * 2 / 3


class LeaseApi(Protocol):
    """What the elector needs of the API server (kube_http.HttpApi has it)."""

    async def get(self, path: str) -> Mapping[str, Any]: ...

    async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def replace(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]: ...


class Elector:
    def __init__(
        self,
        api: LeaseApi,
        settings: LeaseSettings = LeaseSettings(),
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self.identity = settings.identity or default_identity()
        self.holder = ""  # who holds the Lease, as last read
        self.terms = 0  # how many times this replica became the holder
        self._lease: Mapping[str, Any] | None = None  # the Lease as we last wrote it
        self._held_until = -math.inf  # monotonic
        self._path = object_path(COORDINATION, "leases", settings.namespace, settings.name)
        self._collection = self._path.rpartition("/")[0]

    def leading(self) -> bool:
        """Does this replica hold the Lease, as far as it can show right now?"""
        return self._monotonic() < self._held_until

    async def run(
        self, lead: Callable[[], Awaitable[Any]], *, release_on_exit: bool = True
    ) -> NoReturn:
        """Forever: win the Lease, run `lead()` while it is held, cancel it the moment it
        is not. On cancellation the Lease is given up (unless `release_on_exit` is False),
        so another replica need not wait for it to expire."""
        holding = False
        try:
            while True:
                await self._acquire()
                holding = True
                self.terms += 1
                log.info("%s holds lease %s: writing status", self.identity, self._path)
                try:
                    async with asyncio.TaskGroup() as tasks:
                        leader = tasks.create_task(lead(), name="status-leader")
                        await self._keep()
                        # Before the writer hears of it: a write not yet sent is not sent.
                        self._held_until = -math.inf
                        leader.cancel()
                    holding = False
                finally:
                    self._held_until = -math.inf
                log.warning("%s lost lease %s: status writes stop", self.identity, self._path)
        finally:
            if release_on_exit and holding:
                await self._release()

    # -- winning ------------------------------------------------------------------------

    async def _acquire(self) -> None:
        while True:
            try:
                if await self._try_acquire():
                    return
            except ApiError as e:
                log.warning("lease %s: %s", self._path, e)
            await asyncio.sleep(self._settings.retry_every)

    async def _try_acquire(self) -> bool:
        sent = self._monotonic()
        try:
            lease: Mapping[str, Any] | None = await self._api.get(self._path)
        except ApiError as e:
            if e.status != 404:
                raise
            lease = None
        if lease is None:
            return await self._write(self._api.create, self._collection, None, sent)
        spec = lease.get("spec") or {}
        self.holder = str(spec.get("holderIdentity") or "")
        if self.holder and self.holder != self.identity and not self._expired(spec):
            return False
        return await self._write(self._api.replace, self._path, lease, sent)

    def _expired(self, spec: Mapping[str, Any]) -> bool:
        renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
        duration = spec.get("leaseDurationSeconds") or self._settings.duration
        return renewed is None or renewed + float(duration) < self._clock()

    async def _write(
        self,
        call: Callable[[str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]],
        path: str,
        lease: Mapping[str, Any] | None,
        sent: float,
    ) -> bool:
        """Write the Lease naming us; False if another write got there first (409)."""
        try:
            self._lease = await call(path, self._record(lease))
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        self.holder = self.identity
        # Counted from before the request: the renewTime written is no later than that.
        self._held_until = sent + self._settings.deadline
        return True

    def _record(self, lease: Mapping[str, Any] | None, *, release: bool = False) -> dict:
        before = (lease or {}).get("spec") or {}
        now = _micro_time(self._clock())
        taking = before.get("holderIdentity") != self.identity
        transitions = int(before.get("leaseTransitions") or 0)
        if lease is not None and taking and before.get("holderIdentity"):
            transitions += 1
        spec = {
            "holderIdentity": "" if release else self.identity,
            "leaseDurationSeconds": 1 if release else max(1, math.ceil(self._settings.duration)),
            "acquireTime": now if taking else before.get("acquireTime", now),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        metadata: dict[str, Any] = {
            "name": self._settings.name,
            "namespace": self._settings.namespace,
        }
        if lease is not None:
            metadata["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": COORDINATION, "kind": "Lease", "metadata": metadata, "spec": spec}

    # -- holding ------------------------------------------------------------------------

    async def _keep(self) -> None:
        """Renew until the Lease is lost: someone else wrote it, or the deadline passed."""
        while True:
            await asyncio.sleep(min(self._settings.renew_every, self._left()))
            while True:
                left = self._left()
                if left <= 0:
                    return
                try:
                    async with asyncio.timeout(left):
                        if not await self._renew():
                            return
                    break
                except TimeoutError:
                    return
                except ApiError as e:
                    log.warning("lease %s not renewed: %s", self._path, e)
                    await asyncio.sleep(max(0.0, min(self._settings.retry_every, self._left())))

    async def _renew(self) -> bool:
        while True:
            sent = self._monotonic()
            if await self._write(self._api.replace, self._path, self._lease, sent):
                return True
            # 409: someone wrote the Lease since. If it still names us, it was our own
            # renewal whose answer was lost: renew on what it is now.
            current = await self._api.get(self._path)
            self.holder = str((current.get("spec") or {}).get("holderIdentity") or "")
            if self.holder != self.identity:
                return False
            self._lease = current

    def _left(self) -> float:
        return self._held_until - self._monotonic()

    async def _release(self) -> None:
        """Give the Lease up, so a successor need not wait for it to expire."""
        self._held_until = -math.inf
        with contextlib.suppress(ApiError, TimeoutError):
            async with asyncio.timeout(self._settings.retry_every):
                await self._api.replace(self._path, self._record(self._lease, release=True))
                log.info("%s released lease %s", self.identity, self._path)


def _micro_time(at: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
