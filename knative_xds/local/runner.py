"""Revisions as local processes: start them, publish their endpoints, wake them from zero.

A Revision whose first container has a `command` can run here: it is started
with `PORT` (and Knative's `K_REVISION`, `K_CONFIGURATION`) in its environment,
and once its port accepts connections an EndpointSlice for it is published,
exactly as Knative's private service would have one. A revision annotated
`autoscaling.knative.dev/initial-scale: "0"` starts at zero: its traffic goes to
the activator until the first request wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import synth
from ..envoy import stop_process
from ..model import ObjectKey, RawObject

log = logging.getLogger(__name__)

INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"
READY_TIMEOUT = 20.0

Publish = Callable[[Mapping[tuple[str, ObjectKey], RawObject | None]], None]


@dataclass(frozen=True, slots=True)
class Runnable:
    key: ObjectKey
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    start_at_zero: bool
    configuration: str


def runnable(raw: RawObject) -> Runnable | None:
    """How to run a Revision here, or None if its container says no `command`."""
    containers = raw.body.get("spec", {}).get("containers") or []
    first = containers[0] if containers and isinstance(containers[0], Mapping) else {}
    command = [str(c) for c in (first.get("command") or [])] + [
        str(a) for a in (first.get("args") or [])
    ]
    if not command:
        return None
    if command[0] in ("python", "python3"):
        command[0] = sys.executable  # the interpreter knative-xds runs in has the example's apps
    env = tuple(
        (str(e["name"]), str(e.get("value", "")))
        for e in first.get("env") or []
        if isinstance(e, Mapping) and "name" in e
    )
    labels = raw.labels
    return Runnable(
        key=raw.key,
        command=tuple(command),
        env=env,
        start_at_zero=str(raw.annotations.get(INITIAL_SCALE, "")).strip() == "0",
        configuration=str(labels.get("serving.knative.dev/configuration", "")),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slice_object(key: ObjectKey, port: int | None) -> RawObject:
    """The EndpointSlice Knative would keep for the revision's pods (none ready when port is None)."""
    body = synth.endpoint_slice(
        key.name, ["127.0.0.1"] if port else [], port or 1, namespace=key.namespace, suffix="local"
    )
    return RawObject.from_dict(body, "local")


class LocalRevisions:
    """Owns the revision processes. Every process is stopped by `close`."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._known: dict[ObjectKey, Runnable] = {}
        self._procs: dict[ObjectKey, asyncio.subprocess.Process] = {}
        self._ports: dict[ObjectKey, int] = {}
        self._starting: dict[ObjectKey, asyncio.Task[int]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def observe(self, changes: Mapping[tuple[str, ObjectKey], RawObject | None]) -> list[Runnable]:
        """Learn revisions from source changes; return the ones to start now (not at zero)."""
        start = []
        for (kind, key), raw in changes.items():
            if kind != "Revision":
                continue
            if raw is None:
                self._known.pop(key, None)
                continue
            run = runnable(raw)
            if run is None:
                continue
            self._known[key] = run
            if not run.start_at_zero and key not in self._procs:
                start.append(run)
        return start

    def running(self) -> dict[ObjectKey, int]:
        return dict(self._ports)

    async def wake(self, key: ObjectKey) -> int:
        """The port of a running process for this revision, starting it if it is at zero."""
        if key in self._ports and self._procs[key].returncode is None:
            return self._ports[key]
        if key not in self._known:
            raise LookupError(f"revision {key} has no local `command` to run")
        task = self._starting.get(key)
        if task is None:
            task = self._starting[key] = asyncio.ensure_future(self._start(self._known[key]))
            task.add_done_callback(lambda _: self._starting.pop(key, None))
        return await asyncio.shield(task)

    async def start_all(self, runs: list[Runnable]) -> None:
        results = await asyncio.gather(*(self.wake(r.key) for r in runs), return_exceptions=True)
        for run, result in zip(runs, results, strict=True):
            if isinstance(result, Exception):
                log.error("revision %s did not start: %s", run.key, result)

    def start_later(self, runs: list[Runnable]) -> None:
        """Start revisions a file edit added, without holding up the edit; `close` cancels it."""
        if runs:
            task = asyncio.ensure_future(self.start_all(runs))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _start(self, run: Runnable) -> int:
        port = _free_port()
        env = {**os.environ, **dict(run.env), "PORT": str(port), "K_REVISION": run.key.name}
        if run.configuration:
            env["K_CONFIGURATION"] = run.configuration
        log.info("starting revision %s on 127.0.0.1:%d: %s", run.key, port, " ".join(run.command))
        proc = await asyncio.create_subprocess_exec(
            *run.command, env=env, stdout=asyncio.subprocess.DEVNULL
        )
        self._procs[run.key] = proc
        try:
            await _until_accepting(port, proc)
        except BaseException:
            await stop_process(proc)
            self._procs.pop(run.key, None)
            raise
        self._ports[run.key] = port
        endpoints = slice_object(run.key, port)
        self._publish({endpoints.ident: endpoints})
        return port

    async def close(self) -> None:
        for task in [*self._starting.values(), *self._background]:
            task.cancel()
        await asyncio.gather(
            *(stop_process(p) for p in self._procs.values()), return_exceptions=True
        )
        self._procs.clear()
        self._ports.clear()


async def _until_accepting(port: int, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(READY_TIMEOUT):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"exited with code {proc.returncode} before listening on port {port}"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.05)
