"""One ADS stream: a reader applies requests, a writer sends what `plan` says, in push order.

The writer never queues: it wakes on a new snapshot or a request, and plans
against the latest snapshot, so a slow client gets one combined, current push
instead of a backlog of superseded versions.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from ..cache import ConfigCache, Snapshot
from ..resources import ENDPOINT, PUSH_ORDER, short
from . import shared
from .callbacks import NO_CALLBACKS, Callbacks, StreamStatus
from .decide import classify_delta, classify_sotw
from .limits import DEFAULT_LIMITS, Limits, truncated
from .plan import Outgoing, plan_type
from .subscription import Decision, Nack, Subscription
from .turns import Turns

log = logging.getLogger(__name__)

SUPPORTED_TYPES = frozenset(PUSH_ORDER)
_stream_ids = itertools.count(1)


@functools.cache
def _identity(instance: str) -> base_pb2.ControlPlane:
    """Who answered, in every response; one message per server instance, not per send."""
    return base_pb2.ControlPlane(identifier=f"knative-xds/{instance}")


class ProtocolError(Exception):
    """A request the server cannot serve; the stream ends with INVALID_ARGUMENT."""


class StuckClient(Exception):
    """The client read nothing for longer than the send deadline; the stream ends UNAVAILABLE."""


Send = Callable[[bytes], Awaitable[None]]


class Stream:
    def __init__(
        self,
        *,
        cache: ConfigCache,
        delta: bool,
        peer: str,
        callbacks: Callbacks = NO_CALLBACKS,
        limits: Limits = DEFAULT_LIMITS,
        turns: Turns | None = None,
    ) -> None:
        self._cache = cache
        self._limits = limits
        self._turns = turns or Turns()
        self._delta = delta
        self._callbacks = callbacks
        self._wake = asyncio.Event()
        self._closed = False
        self._nonces = itertools.count(1)
        self.status = StreamStatus(id=next(_stream_ids), peer=peer, delta=delta)

    @property
    def subs(self) -> dict[str, Subscription]:
        return self.status.subs

    async def serve(self, requests: AsyncIterator, send: Send) -> None:
        cancel_watch = self._cache.watch(self._wake)
        try:
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self._read(requests))
                writer = tasks.create_task(self._write(send))
                # A writer that stops (client gone) takes the reader with it.
                writer.add_done_callback(lambda _: reader.cancel())
        finally:
            cancel_watch()

    # -- reading ----------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator) -> None:
        try:
            async for request in requests:
                self._check(request)
                # Accepting a response of 10,000 tables recounts what the client holds: in
                # turn with other large work, as ten gateways ACK a relist at once.
                async with self._turns.turn(self._answered_size(request)):
                    if self._delta:
                        self._on_delta(request)
                    else:
                        self._on_sotw(request)
                # An Envoy's request can name 10,000 route tables (most of a megabyte,
                # decoded): hold none of it while waiting for the next one.
                del request
                self._wake.set()
        finally:
            # The client closed its side: the writer stops too.
            self._closed = True
            self._wake.set()

    def _answered_size(self, request) -> int:
        """How many resources the response this request answers carried (0: none)."""
        sub = self.subs.get(request.type_url)
        answered = sub.inflight.get(request.response_nonce) if sub is not None else None
        return len(answered.resources) if answered is not None else 0

    def _check(self, request) -> None:
        if not request.type_url:
            raise ProtocolError("request has no type_url; name the resource type you want")
        if request.type_url not in SUPPORTED_TYPES:
            served = ", ".join(short(t) for t in PUSH_ORDER)
            raise ProtocolError(f"type {request.type_url} is not served here (served: {served})")
        if not self.status.node_id:
            if not request.HasField("node") or not request.node.id:
                raise ProtocolError("the first request on a stream must carry node.id")
            self.status.node_id = request.node.id
            self.status.cluster = request.node.cluster

    def _on_sotw(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        sub = self.subs.get(type_url)
        decision = classify_sotw(request, sub)
        if sub is None:
            sub = self.subs[type_url] = Subscription(type_url)
        nack = self._answer(sub, request.response_nonce, request)
        if decision is Decision.INITIAL and sub.responded:
            # A repeated first request: the client may have lost its state; resend all.
            sub.restart()
        if decision is not Decision.STALE:
            self._check_names(type_url, len(request.resource_names))
            sub.set_names(request.resource_names)
        self._log(decision, type_url, request.response_nonce, sub)
        self._callbacks.on_request(self.status, type_url, decision, nack)

    def _on_delta(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        sub = self.subs.get(type_url)
        decision = classify_delta(request, sub)
        if sub is None:
            sub = self.subs[type_url] = Subscription(type_url)
            snapshot = self._cache.current()
            if snapshot is not None and request.initial_resource_versions:
                sub.seed_known(request.initial_resource_versions, snapshot.of(type_url))
        nack = self._answer(sub, request.response_nonce, request)
        self._check_names(type_url, len(request.resource_names_subscribe))
        sub.update_names(request.resource_names_subscribe, request.resource_names_unsubscribe)
        self._check_names(type_url, len(sub.names))
        self._log(decision, type_url, request.response_nonce, sub)
        self._callbacks.on_request(self.status, type_url, decision, nack)

    def _check_names(self, type_url: str, count: int) -> None:
        if count > self._limits.max_names:
            raise ProtocolError(
                f"{short(type_url)} request names {count} resources; at most "
                f"{self._limits.max_names} may be subscribed on one stream"
            )

    def _answer(self, sub: Subscription, nonce: str, request) -> Nack | None:
        """Apply the ACK or NACK a request carries; the rejection, if it was one."""
        if not nonce:
            return None
        error = request.error_detail.message if request.HasField("error_detail") else None
        if sub.answer(nonce, error) is not Decision.NACK or sub.last_nack is None:
            return None
        # The rejected version is not resent: `sent` still holds it, so plan sees
        # nothing new until the snapshot changes.
        log.warning(
            "NACK %s %s nonce=%s: %s",
            self.status.node_id,
            short(sub.type_url),
            nonce,
            truncated(error or ""),
        )
        return sub.last_nack

    def _log(self, decision: Decision, type_url: str, nonce: str, sub: Subscription) -> None:
        counts = self.status.decisions
        counts[decision.value] = counts.get(decision.value, 0) + 1
        who = f"{self.status.node_id} {short(type_url)}"
        if decision is Decision.NACK:
            return  # logged with its error by _answer
        if decision in (Decision.INITIAL, Decision.SUBSCRIPTION_CHANGE):
            what = "*" if sub.wildcard else f"{len(sub.names)} names"
            log.debug("%s %s %s", decision.value, who, what)
        else:
            log.debug("%s %s nonce=%s", decision.value, who, nonce)

    # -- writing ----------------------------------------------------------------------

    async def _write(self, send: Send) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            for type_url in PUSH_ORDER:
                # The latest snapshot for each type: a send may have let a newer one in.
                snapshot = self._cache.current()
                if snapshot is None or type_url not in self.subs:
                    continue
                if type_url not in snapshot.loaded:
                    continue  # its first complete set is still being built: send nothing
                only = self._changed(type_url)
                size = len(snapshot.of(type_url)) if only is None else len(only)
                async with self._turns.turn(size):
                    newer = self._cache.current()
                    if newer is not None and newer is not snapshot:
                        # Waiting for a turn let a newer snapshot in: plan against it.
                        snapshot, only = newer, self._changed(type_url)
                    out = self._plan(type_url, snapshot, only)
                    if out is None:
                        continue
                    nonce = str(next(self._nonces))
                    self.subs[type_url].record_sent(
                        nonce,
                        out.resources,
                        version=out.version,
                        full_state=out.full_state,
                        removed=out.removed,
                    )
                    self._after_send(out)
                    data = self._encode(out, nonce, snapshot)
                size = len(data)
                try:
                    # Handed over, not kept: a full response of 10,000 route tables is
                    # megabytes, and a hundred idle streams would each hold their last.
                    self.status.sending_since = time.monotonic()
                    async with asyncio.timeout(self._limits.send_deadline):
                        await send(data)
                    self.status.sending_since = None
                    del data
                except TimeoutError:
                    # A client that stopped reading: its stream would hold this response
                    # (and its slot) forever. Only its own writer waited; others went on.
                    raise StuckClient(
                        f"the client read nothing for {self._limits.send_deadline:g} s; "
                        "the stream is closed, reconnect to resume"
                    ) from None
                except Exception as e:
                    # The transport is gone (the client died or reset): there is no one left
                    # to send to, so the stream ends here rather than as a server error.
                    log.info("stream %s: send failed, client gone (%s)", self.status.id, e)
                    self._closed = True
                    return
                self._callbacks.on_response(
                    self.status, type_url, out.version, len(out.resources), size
                )

    def _changed(self, type_url: str) -> set[str] | None:
        """Names of this type changed since its last plan; None when that cannot be told
        (a first plan, or one too far back): every name is looked at then."""
        since = self.subs[type_url].changes_since()
        return self._cache.changed_since(type_url, since) if since is not None else None

    def _plan(self, type_url: str, snapshot: Snapshot, only: set[str] | None) -> Outgoing | None:
        """Plan one type, looking only at names that may have changed for this client."""
        sub = self.subs[type_url]
        if only is not None and not (only or sub.recheck or sub.unsettled or sub.held_gone):
            return None
        plan = plan_type(type_url, snapshot, self.subs, only, delta=self._delta)
        sub.cursor.planned(snapshot.counters.get(type_url, 0), plan.recheck)
        return plan.out

    def _after_send(self, out: Outgoing) -> None:
        """Bookkeeping that crosses types once a response is on its way: a cluster sent
        anew has its endpoints sent again (Envoy re-warms it but does not ask for them)."""
        eds = self.subs.get(ENDPOINT)
        if out.renewed and eds is not None:
            eds.forget_sent(out.renewed)

    def _encode(self, out: Outgoing, nonce: str, snapshot: Snapshot) -> bytes:
        """Header fields, then the shared per-resource entries: bytes are never re-serialized."""
        identity = _identity(snapshot.instance)
        if self._delta:
            head = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=out.version,
                type_url=out.type_url,
                nonce=nonce,
                removed_resources=out.removed,
                control_plane=identity,
            ).SerializeToString()
            if out.shared:
                return head + shared.joined(out.resources, delta=True)
            return head + b"".join(out.resources[n].delta_entry for n in sorted(out.resources))
        head = discovery_pb2.DiscoveryResponse(
            version_info=out.version, type_url=out.type_url, nonce=nonce, control_plane=identity
        ).SerializeToString()
        if out.whole_snapshot:
            return head + snapshot.full_body(out.type_url)
        if out.shared:
            return head + shared.joined(out.resources, delta=False)
        return head + b"".join(out.resources[n].sotw_entry for n in sorted(out.resources))
