"""The one shape every source has: what it feeds (`Sink`) and how it runs (`Source`).

A source owns one view of the outside world (a folder of YAML, a cluster) and
feeds a sink in two phases. First the complete state: objects are `stage`d
(in as many parts as suit the source) and `load`ed, which publishes them all at
once; only then is `ready` set, because an empty or partial first push would
wipe a running gateway. From then on every change is `submit`ted, and the sink
coalesces and applies it. `set_source_problems` names what the source itself
could not read (a file that is not YAML, an API request that keeps failing),
one scope at a time; a later call for the same scope replaces it.

`knative_xds.pipeline.Pipeline` and `knative_xds.app.ControlPlane` are sinks;
`sources.file.FileSource` and `sources.kube.KubeSource` are sources.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..model import Problem, RawObject
from ..model.kinds import Ident


class SourceEvent(enum.Enum):
    RELIST = "relist"
    API_ERROR = "api_error"


@dataclass(frozen=True, slots=True)
class ScopeHealth:
    """What a source last said of one scope it reads."""

    healthy: bool
    detail: str
    # When it last read the scope whole and well (time.time()); None: never.
    last_sync: float | None


# Object changes by identity: a new or changed object, or None for one deleted.
Changes = Mapping[Ident, RawObject | None]


class Sink(Protocol):
    """Where a source's objects go."""

    def stage(self, changes: Changes) -> None:
        """Take in a part of the first state; nothing is published until `load`."""
        ...

    async def load(self, changes: Changes | None = None) -> object:
        """Publish the first state: what was staged, and `changes`."""
        ...

    def submit(self, changes: Changes) -> None:
        """A change after the first state; empty changes only report problems anew."""
        ...

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None: ...

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        """Whether the source can read `scope` (the folder, one API collection) right now.
        Healthy marks a successful sync at this moment; unhealthy keeps the last good
        state serving and makes the plane not ready until the scope is healthy again."""
        ...

    def source_event(self, event: SourceEvent) -> None:
        """Count one event of the outside world (a relist, an API error) for metrics."""
        ...


class SinkInFront:
    """A sink in front of another: passes everything on as it is. A stage that changes
    what reaches the sink (local revisions, Services reconciled) overrides the
    methods it changes and inherits what a source says of itself."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def stage(self, changes: Changes) -> None:
        self._sink.stage(changes)

    async def load(self, changes: Changes | None = None) -> object:
        return await self._sink.load(changes)

    def submit(self, changes: Changes) -> None:
        self._sink.submit(changes)

    def set_source_problems(self, scope: str, problems: Iterable[Problem]) -> None:
        self._sink.set_source_problems(scope, problems)

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        self._sink.source_health(scope, healthy, detail)

    def source_event(self, event: SourceEvent) -> None:
        self._sink.source_event(event)


class Source(Protocol):
    async def run(self, sink: Sink, ready: asyncio.Event) -> None:
        """Feed `sink` until cancelled: the first complete state through `stage`/`load`,
        then `ready` is set, then every later change through `submit`.

        Errors of the outside world (a bad file, an API server away) are reported
        through `set_source_problems` and do not end `run`; only a source that
        cannot start at all (a path that does not exist) raises.
        """
        ...
