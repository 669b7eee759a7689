"""A Kubernetes API server double that speaks the real list/watch HTTP protocol.

It serves JSON lists (with `metadata.resourceVersion`, `limit`/`continue`
pages) and chunked watch streams of `{"type": ..., "object": ...}` lines on
127.0.0.1 at a port chosen at run time, and filters both by `labelSelector`
and `fieldSelector` as the API server does. An object that stops (or starts)
matching a watch's selector is reported to it as DELETED (or ADDED).

It also takes writes as the API server does for the status side: one
object's GET, POST (409 when it exists), PUT (409 on a stale
`metadata.resourceVersion`) and JSON merge PATCH, of the object or of its
`/status` subresource. A status write changes only `status`; any change
bumps the resourceVersion and is seen by watches, and `metadata.generation`
moves only when `spec` changes (as for a CRD with a status subresource).

Tests steer it: `put`/`delete` change objects (each bumps the resourceVersion),
`compact` forgets history so older versions get 410 Gone, `expire_watches`
and `drop_watches` end open watches, `fail` answers the next requests with an
error status, `hold` parks requests until released, and `latency` delays
answers per verb. Every request is recorded with its query and body, how many
of its verb were in flight at once is kept in `peak`, and `wait_for` waits on
the record without sleeping.
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
    "Ingress": "ingresses",
    "Service": "services",
    "Secret": "secrets",
    "Lease": "leases",
}
_GROUP = r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))"
_PATH = re.compile(_GROUP + r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)$")
_OBJECT = re.compile(
    _GROUP + r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)/(?P<name>[^/]+)(?:/(?P<sub>status))?$"
)
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class Seen:
    verb: str  # "list", "watch", "get", "create", "replace" or "patch"
    path: str
    query: Mapping[str, str]
    at: float
    authorization: str = ""
    body: Any = None  # the decoded JSON body of a write
    content_type: str = ""
    # How many requests of this verb were being answered when it arrived (itself included).
    concurrent: int = 1

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
        # Per verb: seconds every answer waits, requests now being answered, most at once.
        self.latency: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
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
        """Create or replace an object (its kind and apiVersion say where it lives).

        As a client's write of the main resource would: a body without `status`
        keeps the stored one, and `metadata.generation` counts changes of `spec`.
        """
        obj = json.loads(json.dumps(body))
        resource = (obj["apiVersion"], PLURALS[obj["kind"]])
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        old = self._objects.get(resource, {}).get((meta["namespace"], meta["name"]))
        if old is not None and "status" not in obj and "status" in old:
            obj["status"] = old["status"]
        return self._store(resource, obj, old)

    def stored(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The object as the server now holds it (KeyError if there is none)."""
        return self._objects[(api_version, PLURALS[kind])][(namespace, name)]

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

    def _store(
        self, resource: tuple[str, str], obj: dict[str, Any], old: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        if old is None:
            meta.setdefault("generation", 1)
        else:
            moved = old.get("spec") != obj.get("spec")
            meta["generation"] = old["metadata"].get("generation", 1) + int(moved)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects.setdefault(resource, {})[(meta["namespace"], meta["name"])] = obj
        self._record(_Event(self._rv, resource, old, obj))
        return obj

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        self._poke()

    def _end_watches(self, *, expired: bool) -> None:
        self._ended[self._epoch] = expired
        self._epoch += 1
        self._poke()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _OBJECT.match(request.path) or _PATH.match(request.path)
        verb = _verb(request.method, match, request.query)
        if match is None or verb is None:
            return _error(404 if match is None else 405, "no such path or method")
        query = dict(request.query)
        body = await request.json() if request.can_read_body else None
        count = self._in_flight[verb] = self._in_flight.get(verb, 0) + 1
        self.peak[verb] = max(self.peak.get(verb, 0), count)
        seen = Seen(
            verb,
            request.path,
            query,
            time.monotonic(),
            request.headers.get("Authorization", ""),
            body,
            request.content_type if body is not None else "",
            count,
        )
        self.seen.append(seen)
        self._poke()
        try:
            if self.latency.get(verb):
                await asyncio.sleep(self.latency[verb])
            status = await self._apply_rules(verb, seen.target)
            if status:
                return _error(status, "injected failure")
            resource = (match["core"] or match["gv"], match["plural"])
            if verb in ("get", "create", "replace", "patch"):
                return self._write(verb, resource, match, seen)
            selects = _selector(match["ns"], query)
            if verb == "list":
                return self._list(resource, selects, query)
            return await self._watch(request, resource, selects, query)
        finally:
            self._in_flight[verb] -= 1

    def _write(
        self, verb: str, resource: tuple[str, str], match: re.Match, seen: Seen
    ) -> web.Response:
        """One object's GET, POST, PUT or merge PATCH (of it or of its status)."""
        store = self._objects.setdefault(resource, {})
        body = seen.body if isinstance(seen.body, dict) else {}
        meta = body.get("metadata") or {}
        if verb == "create":
            key = (match["ns"], meta.get("name", ""))
            if key in store:
                return _error(409, f"{resource[1]} {key[1]} already exists", "AlreadyExists")
            obj = {**body, "metadata": {**meta, "namespace": match["ns"]}}
            return web.json_response(self._store(resource, obj, None), status=201)
        key = (match["ns"], match["name"])
        old = store.get(key)
        if old is None:
            return _error(404, f"{resource[1]} {key[1]} not found", "NotFound")
        if verb == "get":
            return web.json_response(old)
        if meta.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]):
            return _error(409, "the object has been modified; apply to the latest", "Conflict")
        if verb == "patch":
            if seen.content_type != MERGE_PATCH:
                return _error(415, f"unsupported patch type {seen.content_type}")
            body = merge_patch(old, body)
        obj = json.loads(json.dumps(body))
        if match["sub"]:
            # The status subresource writes status and nothing else.
            obj = {**old, "status": obj.get("status")}
        obj["metadata"] = {**obj.get("metadata", {}), "namespace": key[0], "name": key[1]}
        return web.json_response(self._store(resource, obj, old))

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


def _verb(method: str, match: re.Match | None, query: Mapping[str, str]) -> str | None:
    if match is None:
        return None
    one = "name" in match.groupdict()
    if method == "GET":
        if one:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    return {("POST", False): "create", ("PUT", True): "replace", ("PATCH", True): "patch"}.get(
        (method, one)
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


_REASONS = {404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 415: "UnsupportedMediaType"}


def _error(code: int, message: str, reason: str = "") -> web.Response:
    reason = reason or _REASONS.get(code, "InternalError")
    return web.json_response(_status(code, reason, message), status=code)


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
    """Namespace, label selector (`k`, `!k`, `k=v`, `k==v`, `k!=v`) and field selector."""
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
            # A dotted path into the object (`metadata.name`, a Secret's `type`), as the
            # API server's field selectors for these kinds are.
            path, value = term.split("=")
            found: Any = obj
            for part in path.split("."):
                found = found.get(part) if isinstance(found, Mapping) else None
            if str(found) != value:
                return False
        return True

    return selects
