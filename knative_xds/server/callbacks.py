"""The one seam through which anything outside the protocol watches ADS streams.

Like go-control-plane's `Callbacks`: the stream loop calls these at fixed points
and knows nothing of who listens (the NACK log below, status readiness,
metrics). Every call is synchronous and runs on the stream's task, so an
observer must be quick and must not await; the `StreamStatus` it is handed is
live (it keeps changing after the call), so an observer copies what it keeps.

An observer that raises is logged and skipped: a bug in a status view must not
cut a gateway off its configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from .subscription import Decision, Nack, Subscription

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StreamStatus:
    """What an operator (and every observer) sees of one connected client."""

    id: int
    peer: str
    delta: bool
    node_id: str = ""
    cluster: str = ""
    subs: dict[str, Subscription] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    # When the send under way began (monotonic clock), None between sends: a client
    # that stopped reading shows here until the send deadline cuts its stream.
    sending_since: float | None = None


class Callbacks:
    """What an observer can watch; each does nothing here: observers override what they use."""

    def on_stream_open(self, status: StreamStatus) -> None:
        """A stream was accepted (its node is not known yet: no request was read)."""

    def on_stream_close(self, status: StreamStatus) -> None:
        """The stream ended, whatever the cause; it is no longer in the server's streams."""

    def on_request(
        self, status: StreamStatus, type_url: str, decision: Decision, nack: Nack | None
    ) -> None:
        """A request was applied: `status.subs[type_url]` (its `acked` map included) is
        current. `nack` is set when this request rejected a response we had in flight."""

    def on_response(
        self,
        status: StreamStatus,
        type_url: str,
        version: str,
        resource_count: int,
        byte_count: int,
    ) -> None:
        """A response was handed to the transport."""


class Fanout(Callbacks):
    """Calls every registered observer in turn; observers can come and go while streams run."""

    def __init__(self, observers: Iterable[Callbacks] = ()) -> None:
        self._observers: tuple[Callbacks, ...] = tuple(observers)

    def add(self, observer: Callbacks) -> None:
        self._observers = (*self._observers, observer)

    def remove(self, observer: Callbacks) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)

    def _each(self, event: str, *args: object) -> None:
        for o in self._observers:
            try:
                getattr(o, event)(*args)
            except Exception:
                log.exception("stream observer %r failed in %s", o, event)

    def on_stream_open(self, status: StreamStatus) -> None:
        self._each("on_stream_open", status)

    def on_stream_close(self, status: StreamStatus) -> None:
        self._each("on_stream_close", status)

    def on_request(
        self, status: StreamStatus, type_url: str, decision: Decision, nack: Nack | None
    ) -> None:
        self._each("on_request", status, type_url, decision, nack)

    def on_response(
        self,
        status: StreamStatus,
        type_url: str,
        version: str,
        resource_count: int,
        byte_count: int,
    ) -> None:
        self._each("on_response", status, type_url, version, resource_count, byte_count)


NO_CALLBACKS = Callbacks()


class NackLog(Callbacks):
    """The last rejection per (node id, type URL): what an operator asks first.

    Kept while a stream of that node is open: a client that connects under a
    thousand node ids must not make it grow without end. Each message is already
    cut to `limits.MAX_NACK_TEXT` by the subscription.
    """

    def __init__(self) -> None:
        self.nacks: dict[tuple[str, str], Nack] = {}
        self._streams: dict[str, set[int]] = {}  # node id → its open streams that spoke

    def on_request(
        self, status: StreamStatus, type_url: str, decision: Decision, nack: Nack | None
    ) -> None:
        self._streams.setdefault(status.node_id, set()).add(status.id)
        if nack is not None:
            self.nacks[(status.node_id, type_url)] = nack

    def on_stream_close(self, status: StreamStatus) -> None:
        streams = self._streams.get(status.node_id)
        if streams is None:
            return
        streams.discard(status.id)
        if not streams:
            del self._streams[status.node_id]
            for key in [k for k in self.nacks if k[0] == status.node_id]:
                del self.nacks[key]
