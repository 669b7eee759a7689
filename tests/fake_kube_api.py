"""A Kubernetes API server double that speaks the real list/watch HTTP protocol.

It serves JSON lists (with `metadata.resourceVersion`, `limit`/`continue`
pages) and chunked watch streams of `{"type": ..., "object": ...}` lines on
127.0.0.1 at a port chosen at run time, and filters both by `labelSelector`
and `fieldSelector` as the API server does. An object that stops (or starts)
matching a watch's selector is reported to it as DELETED (or ADDED).

Tests steer it: `put`/`delete` change objects (each bumps the resourceVersion),
`compact` forgets history so older versions get 410 Gone, `expire_watches`
and `drop_watches` end open watches, `fail` answers the next requests with an
error status, and `hold` parks requests until released. Every request is
recorded with its query, and `wait_for` waits on the record without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PLURALS = {
    "Route": "routes",
    "Revision": "revisions",
    "Configuration": "configurations",
    "EndpointSlice": "endpointslices",
    "ConfigMap": "configmaps",
}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)$"
)


@dataclass(frozen=True, slots=True)
class Seen:
    verb: str  # "list" or "watch"
    path: str
    query: Mapping[str, str]
    at: float
    authorization: str = ""

    @property
    def target(self) -> str:
        """Path and decoded query, for matching by substring."""
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in self.query.items())


@dataclass(frozen=True, slots=True)
class _Event:
    rv: int
    resource: tuple[str, str]  # (group/version, plural)
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None


@dataclass(slots=True)
class _Rule:
    verb: str
    part: str  # a substring of the path and decoded query
    times: int
    status: int = 0
    gate: asyncio.Event | None = None  # set: a held request may go on
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        assert self.gate is not None, "only a held request can be released"
        self.gate.set()


class Changed:
    """An event replaced each time it fires, so a waiter that looked before never misses one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    async def until(self, check: Callable[[], Any]) -> None:
        while not check():
            await self._event.wait()


class FakeApiServer:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._history: list[_Event] = []
        self._rv = 100
        self._oldest = 0  # a watch from an older version gets 410 Gone
        self._epoch = 0  # watches opened before `_expired_epoch` end (with 410 if expired)
        self._ended: dict[int, bool] = {}
        self._rules: list[_Rule] = []
        self._changed = Changed()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self._end_watches(expired=False)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def version(self) -> int:
        """The current resourceVersion (what a list now would report)."""
        return self._rv

    # -- steering -------------------------------------------------------------------------

    def put(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object (its kind and apiVersion say where it lives)."""
        obj = json.loads(json.dumps(body))
        resource = (obj["apiVersion"], PLURALS[obj["kind"]])
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        store = self._objects.setdefault(resource, {})
        old = store.get((meta["namespace"], meta["name"]))
        store[(meta["namespace"], meta["name"])] = obj
        self._record(_Event(self._rv, resource, old, obj))
        return obj

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        resource = (api_version, PLURALS[kind])
        old = self._objects.get(resource, {}).pop((namespace, name))
        self._rv += 1
        gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._rv)}}
        self._record(_Event(self._rv, resource, gone, None))

    def bookmark(self) -> int:
        """Send every open watch a BOOKMARK at a new version (nothing else changes)."""
        self._rv += 1
        self._record(_Event(self._rv, ("", ""), None, None))
        return self._rv

    def compact(self) -> None:
        """Forget history before now: a watch from an older version gets 410 Gone."""
        self._oldest = self._rv

    def expire_watches(self) -> None:
        """Open watches get an ERROR event with code 410, as after an etcd compaction."""
        self._end_watches(expired=True)

    def drop_watches(self) -> None:
        """Open watches end without a word, as when a connection or the server goes away."""
        self._end_watches(expired=False)

    def fail(self, verb: str, part: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests whose path and query hold `part` with `status`."""
        self._rules.append(_Rule(verb, part, times, status=status))

    def hold(self, verb: str, part: str) -> _Rule:
        """Park the next matching request until `rule.release()`; `rule.arrived` says when."""
        rule = _Rule(verb, part, 1, gate=asyncio.Event())
        self._rules.append(rule)
        return rule

    def requests(self, verb: str, part: str = "") -> list[Seen]:
        return [s for s in self.seen if s.verb == verb and part in s.target]

    async def wait_for(self, check: Callable[[], bool]) -> None:
        await self._changed.until(check)

    # -- internals ------------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.fire()

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        self._poke()

    def _end_watches(self, *, expired: bool) -> None:
        self._ended[self._epoch] = expired
        self._epoch += 1
        self._poke()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _PATH.match(request.path)
        if match is None:
            return web.json_response(_status(404, "NotFound", "no such path"), status=404)
        query = dict(request.query)
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        seen = Seen(
            verb, request.path, query, time.monotonic(), request.headers.get("Authorization", "")
        )
        self.seen.append(seen)
        self._poke()
        status = await self._apply_rules(verb, seen.target)
        if status:
            return web.json_response(
                _status(status, "InternalError", "injected failure"), status=status
            )
        resource = (match["core"] or match["gv"], match["plural"])
        selects = _selector(match["ns"], query)
        if verb == "list":
            return self._list(resource, selects, query)
        return await self._watch(request, resource, selects, query)

    async def _apply_rules(self, verb: str, target: str) -> int:
        for rule in self._rules:
            if rule.times > 0 and rule.verb == verb and rule.part in target:
                rule.times -= 1
                rule.arrived.set()
                if rule.gate is not None:
                    await rule.gate.wait()
                return rule.status
        return 0

    def _list(
        self,
        resource: tuple[str, str],
        selects: Callable[[Mapping], bool],
        query: Mapping[str, str],
    ) -> web.Response:
        items = sorted(
            (o for o in self._objects.get(resource, {}).values() if selects(o)),
            key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]),
        )
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response(
            {"kind": "List", "apiVersion": resource[0], "metadata": meta, "items": page}
        )

    async def _watch(
        self,
        request: web.Request,
        resource: tuple[str, str],
        selects: Callable[[Mapping], bool],
        query: Mapping[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        since = int(query.get("resourceVersion") or 0)
        if since < self._oldest:
            await _send(
                response,
                "ERROR",
                _status(410, "Expired", f"too old resource version: {since} ({self._oldest})"),
            )
            return response
        epoch, position = self._epoch, 0
        bookmarks = query.get("allowWatchBookmarks") == "true"
        try:
            while True:
                wake = self._changed.current()
                for event in self._history[position:]:
                    if event.rv > since:
                        await self._send_event(response, event, resource, selects, bookmarks)
                position = len(self._history)
                if epoch in self._ended:
                    if self._ended[epoch]:
                        await _send(response, "ERROR", _status(410, "Expired", "watch expired"))
                    return response
                await wake.wait()
        except (ConnectionResetError, asyncio.CancelledError):
            return response

    async def _send_event(
        self,
        response: web.StreamResponse,
        event: _Event,
        resource: tuple[str, str],
        selects: Callable[[Mapping], bool],
        bookmarks: bool,
    ) -> None:
        if event.resource == ("", ""):
            if bookmarks:
                meta = {"resourceVersion": str(event.rv)}
                await _send(response, "BOOKMARK", {"kind": "Bookmark", "metadata": meta})
            return
        if event.resource != resource:
            return
        old, new = event.old, event.new
        was = old is not None and selects(old)
        if new is not None and selects(new):
            await _send(response, "MODIFIED" if was else "ADDED", new)
        elif old is not None and was:
            await _send(response, "DELETED", new or old)  # a deletion, or no longer selected


async def _send(response: web.StreamResponse, kind: str, obj: Mapping[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _selector(namespace: str | None, query: Mapping[str, str]) -> Callable[[Mapping], bool]:
    """Namespace, label selector (`k`, `!k`, `k=v`, `k==v`, `k!=v`) and field selector on name."""
    labels = [t for t in (query.get("labelSelector") or "").split(",") if t]
    fields = [t for t in (query.get("fieldSelector") or "").split(",") if t]

    def selects(obj: Mapping) -> bool:
        meta = obj["metadata"]
        if namespace and meta["namespace"] != namespace:
            return False
        have = meta.get("labels") or {}
        for term in labels:
            if "!=" in term:
                k, v = term.split("!=")
                ok = have.get(k) != v
            elif "=" in term:
                k, v = term.replace("==", "=").split("=")
                ok = have.get(k) == v
            else:
                ok = (term[1:] not in have) if term.startswith("!") else (term in have)
            if not ok:
                return False
        for term in fields:
            path, value = term.split("=")
            if str(meta.get(path.removeprefix("metadata."))) != value:
                return False
        return True

    return selects
