"""One Kubernetes collection, listed then watched, kept in step across disconnects and expiry.

A `Reflector` does for one collection what client-go's reflector does: list
(in pages), remember the objects and the list's resourceVersion, then watch
from that version with bookmarks. What it reports is always a change against
what it reported before, so a consumer never sees a gap or a duplicate:

- a watch that ends (server timeout, idle connection) is reopened from the
  last resourceVersion seen, bookmarks included, so nothing is listed again;
- a watch or a list page answered with 410 Gone (the version was compacted
  away) leads to a fresh list, diffed against the known objects: what changed
  in the gap is reported, and objects deleted in the gap are reported as
  deletions (None);
- any other error (an HTTP error status, a refused or dropped connection) is
  logged and retried after an exponential, capped, jittered delay. No API
  error raises out of `Reflector.run`; it runs until cancelled.

The wire side is behind `KubeApi` (list pages and watch events, as dicts);
`kube_http.HttpApi` implements it over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from ..model import ObjectKey, RawObject
from .base import SourceEvent

log = logging.getLogger(__name__)

ORIGIN = "kubernetes"
# Objects trimmed, or compared when a relist is diffed, between two turns of the
# event loop: about 10 ms of work, so that ADS streams are served during a relist.
DIFF_STEP = 250


class ApiError(Exception):
    """The API server answered an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.message = message


class Expired(ApiError):
    """410 Gone: the resourceVersion asked for is older than the server keeps; list again."""


@dataclass(frozen=True, slots=True)
class Collection:
    """What one list/watch asks for: a resource, a namespace or all, and selectors."""

    kind: str
    api_version: str  # "v1" for the core group, else "group/version"
    plural: str
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None

    @property
    def path(self) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{scope}/{self.plural}"

    def selectors(self) -> list[tuple[str, str]]:
        query = []
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        if self.field_selector:
            query.append(("fieldSelector", self.field_selector))
        return query

    def __str__(self) -> str:
        group = self.api_version.rpartition("/")[0]
        where = f" in {self.namespace}" if self.namespace else ""
        chosen = ", ".join(f"{k}={v}" for k, v in self.selectors())
        return (
            f"{self.plural}{'.' + group if group else ''}{where}{f' ({chosen})' if chosen else ''}"
        )


class KubeApi(Protocol):
    """What a reflector needs of the API server: list pages and watch events, as dicts."""

    async def list_page(
        self, collection: Collection, *, limit: int, continue_token: str | None
    ) -> Mapping[str, Any]: ...

    def watch(
        self, collection: Collection, *, resource_version: str, timeout_seconds: int
    ) -> AsyncGenerator[Mapping[str, Any], None]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays with a cap; each is a random 50-100 % of its step.

    The jitter keeps the replicas of the control plane (and its several watches)
    from retrying in lockstep against an API server that is already struggling.
    """

    first: float = 0.5
    cap: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before retry number `attempt` (0-based); `rand` is uniform in [0, 1)."""
        step = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return step * (0.5 + rand / 2)


@dataclass(frozen=True, slots=True)
class WatchOptions:
    backoff: Backoff = Backoff()
    page_size: int = 500
    # Server-side watch timeout; randomized up to twice this, as client-go does,
    # so that many watchers do not all reconnect at the same moment.
    watch_seconds: int = 300
    # A watch that ends sooner than this with no event at all backs off before the next.
    quick_end: float = 1.0


Emit = Callable[[Collection, dict[ObjectKey, RawObject | None], bool], None]
Project = Callable[[str, Mapping[str, Any]], dict[str, Any]]
Report = Callable[[Collection, str | None], None]


class Reflector:
    """Keeps one collection's objects in step with the API server; reports changes to `emit`.

    `emit(collection, changes, listed)` gets every change exactly once;
    `listed` is True for the result of a (re)list. `project` trims a body to
    what is kept. `report(collection, message)` names a persisting failure, or
    None once the collection works again.
    """

    def __init__(
        self,
        api: KubeApi,
        collection: Collection,
        *,
        emit: Emit,
        project: Project,
        report: Report,
        options: WatchOptions = WatchOptions(),
        events: Callable[[SourceEvent], None] | None = None,
    ) -> None:
        self.collection = collection
        self._api = api
        self._emit = emit
        self._project = project
        self._report = report
        self._options = options
        self._known: dict[ObjectKey, RawObject] = {}
        self._version = ""
        self._failures = 0
        self._expired = False
        self._problem: str | None = None
        # Told of each relist after the first list and of each failed request (metrics).
        self._events = events or _ignore
        self._lists = 0

    async def run(self) -> NoReturn:
        must_list = True
        while True:
            try:
                if must_list:
                    await self._relist()
                    must_list = False
                await self._watch()
            except Expired as e:
                must_list = True
                # Expiry is routine (compaction, a long disconnect): list again at once.
                # Only a second 410 with no event in between backs off.
                if not self._expired:
                    self._expired = True
                    log.info("%s: %s; listing again", self.collection, e.message)
                    continue
                await self._pause(e)
            except ApiError as e:
                await self._pause(e)

    async def _pause(self, error: ApiError | None) -> None:
        delay = self._options.backoff.delay(self._failures, random.random())
        self._failures += 1
        if error is None:
            log.info(
                "%s: the watch ended at once; watching again in %.1f s", self.collection, delay
            )
        else:
            self._events(SourceEvent.API_ERROR)
            message = f"{error}{_hint(error.status)}"
            log.warning("%s: %s; retrying in %.1f s", self.collection, message, delay)
            self._set_problem(message)
        await asyncio.sleep(delay)

    def _set_problem(self, message: str | None) -> None:
        """Tell `report` when a failure starts, changes or ends; not at every retry."""
        if message != self._problem:
            self._report(self.collection, message)
        self._problem = message

    def _healthy(self) -> None:
        self._failures, self._expired = 0, False
        self._set_problem(None)

    # -- list --------------------------------------------------------------------------

    async def _relist(self) -> None:
        if self._lists:
            self._events(SourceEvent.RELIST)
        self._lists += 1
        fresh, version = await self._list_all()
        changes: dict[ObjectKey, RawObject | None] = dict.fromkeys(
            self._known.keys() - fresh.keys()
        )
        for n, (key, raw) in enumerate(fresh.items(), 1):
            old = self._known.get(key)
            if old is not None and old.body == raw.body:
                fresh[key] = old  # one copy of an unchanged object, shared with the model
            else:
                changes[key] = raw
            if n % DIFF_STEP == 0:
                # Comparing 10,000 bodies at once would hold up every ADS stream.
                await asyncio.sleep(0)
        self._known, self._version = fresh, version
        log.info(
            "%s: listed %d objects at version %s, %d changed",
            self.collection, len(fresh), version, len(changes),
        )  # fmt: skip
        self._set_problem(None)
        self._emit(self.collection, changes, True)

    async def _list_all(self) -> tuple[dict[ObjectKey, RawObject], str]:
        objects: dict[ObjectKey, RawObject] = {}
        token: str | None = None
        while True:
            page = await self._api.list_page(
                self.collection, limit=self._options.page_size, continue_token=token
            )
            for n, item in enumerate(page.get("items") or (), 1):
                if not isinstance(item, Mapping):
                    raise ApiError(0, f"malformed list: an item is {type(item).__name__}")
                raw = self._raw(item)
                objects[raw.key] = raw
                if n % DIFF_STEP == 0:
                    await asyncio.sleep(0)  # trimming a 500-object page takes ~20 ms
            meta = _mapping(page.get("metadata"))
            token = meta.get("continue") or None
            if token is None:
                return objects, str(meta.get("resourceVersion") or "")

    def _raw(self, body: Mapping[str, Any]) -> RawObject:
        c = self.collection
        trimmed = self._project(c.kind, body)
        trimmed.update(apiVersion=c.api_version, kind=c.kind)
        return RawObject(
            kind=c.kind, api_version=c.api_version, key=_key(body), body=trimmed, origin=ORIGIN
        )

    # -- watch -------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Follow events until the stream ends, then pause if it ended suspiciously soon."""
        seconds = int(self._options.watch_seconds * (1 + random.random()))
        events = self._api.watch(
            self.collection, resource_version=self._version, timeout_seconds=seconds
        )
        loop = asyncio.get_running_loop()
        started, progressed = loop.time(), False
        # After a failure, a watch that stays open past `quick_end` works again, even on
        # a quiet collection with no event to show it: the source is healthy (ready) then,
        # not minutes later when the watch times out.
        recovered = (
            loop.call_later(self._options.quick_end, self._healthy)
            if self._problem is not None
            else None
        )
        try:
            async with aclosing(events):
                async for event in events:
                    self._on_event(event)
                    if not progressed:
                        progressed = True
                        self._healthy()
        finally:
            if recovered is not None:
                recovered.cancel()
        # A quiet collection's watch may end (server timeout, idle reconnect) with no
        # event, and is then healthy; one that ends at once with nothing is not, and a
        # server that closes every watch straight away must not be hammered.
        if progressed:
            return
        if loop.time() - started < self._options.quick_end:
            await self._pause(None)
        else:
            self._healthy()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        kind, body = event.get("type"), event.get("object")
        if not isinstance(body, Mapping):
            raise ApiError(0, f"malformed watch event of type {kind!r}: no object")
        if kind == "ERROR":
            raise _status_error(body)
        version = _mapping(body.get("metadata")).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(self._raw(body))
        elif kind == "DELETED":
            key = _key(body)
            if self._known.pop(key, None) is not None:
                self._emit(self.collection, {key: None}, False)
        elif kind != "BOOKMARK":
            log.warning("%s: ignoring a watch event of unknown type %r", self.collection, kind)
            return
        if version:
            self._version = str(version)

    def _upsert(self, raw: RawObject) -> None:
        old = self._known.get(raw.key)
        if old is not None and old.body == raw.body:
            return  # only fields the model does not read changed
        self._known[raw.key] = raw
        self._emit(self.collection, {raw.key: raw}, False)


def _ignore(event: SourceEvent) -> None:
    pass


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _key(body: Mapping[str, Any]) -> ObjectKey:
    meta = _mapping(body.get("metadata"))
    return ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _status_error(status: Mapping[str, Any]) -> ApiError:
    code = status.get("code")
    message = str(status.get("message") or status.get("reason") or "error event")
    if code == 410 or status.get("reason") in ("Expired", "Gone"):
        return Expired(410, message)
    return ApiError(code if isinstance(code, int) else 0, message)


def _hint(status: int) -> str:
    if status == 403:
        return " (check the ClusterRole: knative-xds needs list and watch on this)"
    if status == 404:
        return " (is Knative Serving installed? its CRDs must exist)"
    return ""
