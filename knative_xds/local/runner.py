"""Revisions as local processes: start them, publish their endpoints, stop them drained.

A Revision whose first container has a `command` can run here: each of its
processes is started with its own `PORT` (and Knative's `K_REVISION`,
`K_CONFIGURATION`), in its own process group, its output appended to the
revision's log file. A process is ready when the container's `readinessProbe`
passes (`httpGet` path, or `tcpSocket`), or, without one, when its port accepts
a connection (Knative's default probe); the probe's port is the container's, so
here it is always `PORT`. Only then is its EndpointSlice (one per process, so
Envoy balances across them) published: no request reaches a process that is
not ready. A process is stopped only after its slice is withdrawn and the
gateway holds no request for it (`drained`, from `up`): make-before-break.

How many processes run is the autoscaler's call (`scale`); the activator's
`wake` starts one for a revision at zero. A revision that has only an `image`
is named once with what to add to run it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import synth
from ..model import ObjectKey, RawObject
from .autoscaler import ScaleSpec, scale_spec
from .readiness import Probe, readiness_probe, until_ready

log = logging.getLogger(__name__)

STOP_GRACE = 5.0
DEFAULT_TIMEOUT_SECONDS = 300  # Knative's default `timeoutSeconds`

Publish = Callable[[Mapping[tuple[str, ObjectKey], RawObject | None]], None]
# Until the gateway holds no request for this process (revision, port, deadline).
Drained = Callable[[ObjectKey, int, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Runnable:
    key: ObjectKey
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    configuration: str
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    h2c: bool = False  # its first port is named `h2c`: it speaks HTTP/2 without TLS
    probe: Probe = field(default_factory=Probe)
    scale: ScaleSpec = field(default_factory=ScaleSpec)

    @property
    def start_at_zero(self) -> bool:
        return self.scale.first_count == 0


def _first_container(raw: RawObject) -> Mapping:
    containers = raw.body.get("spec", {}).get("containers") or []
    return containers[0] if containers and isinstance(containers[0], Mapping) else {}


def runnable(raw: RawObject) -> Runnable | None:
    """How to run a Revision here, or None if its container says no `command`."""
    first = _first_container(raw)
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
    return Runnable(
        key=raw.key,
        command=tuple(command),
        env=env,
        configuration=str(raw.labels.get("serving.knative.dev/configuration", "")),
        timeout_seconds=_timeout_seconds(raw),
        h2c=_speaks_h2c(first),
        probe=readiness_probe(first),
        scale=scale_spec(raw),
    )


def _speaks_h2c(container: Mapping) -> bool:
    ports = container.get("ports") or []
    return bool(ports) and isinstance(ports[0], Mapping) and ports[0].get("name") == "h2c"


def _timeout_seconds(raw: RawObject) -> int:
    value = raw.body.get("spec", {}).get("timeoutSeconds")
    # The model reports a bad value; here it only bounds how long the activator waits.
    return value if isinstance(value, int) and value > 0 else DEFAULT_TIMEOUT_SECONDS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slice_object(key: ObjectKey, port: int, *, h2c: bool = False) -> RawObject:
    """The EndpointSlice Knative would keep for one of the revision's pods (here: a process)."""
    body = synth.endpoint_slice(
        key.name,
        ["127.0.0.1"],
        port,
        namespace=key.namespace,
        port_name="h2c" if h2c else "http",  # the name tells the gateway to speak h2c
        suffix=f"local-{port}",
    )
    return RawObject.from_dict(body, "local")


@dataclass(eq=False)
class Instance:
    """One process of a revision: starting, then serving, then draining."""

    port: int
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    serving: bool = False
    draining: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class LocalRevisions:
    """Owns the revision processes. Every process is stopped by `close`."""

    def __init__(
        self,
        publish: Publish,
        *,
        log_dir: Path,
        drained: Drained | None = None,
        announce: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    ) -> None:
        self._publish = publish
        self._log_dir = log_dir
        self._drained = drained
        self._announce = announce
        self._known: dict[ObjectKey, Runnable] = {}
        self._told: set[ObjectKey] = set()
        self._instances: dict[ObjectKey, list[Instance]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Called with (revision, spawned, ready), perf_counter times, once a process is
        # ready and before its endpoints are published: benchmarks time cold starts.
        self.on_ready: Callable[[ObjectKey, float, float], None] | None = None

    def log_path(self, key: ObjectKey) -> Path:
        return self._log_dir / f"{key.namespace}_{key.name}.log"

    def observe(self, changes: Mapping[tuple[str, ObjectKey], RawObject | None]) -> list[Runnable]:
        """Learn revisions from source changes; return the ones to start now (not at zero)."""
        start = []
        for (kind, key), raw in changes.items():
            if kind != "Revision":
                continue
            if raw is None:  # the revision is gone from the files: so are its processes
                self.scale(key, 0)
                self._known.pop(key, None)
                continue
            run = runnable(raw)
            if run is None:
                self._tell_image_only(raw)
                continue
            if key not in self._known:
                self._announce(f"revision {key}: output in {self.log_path(key)}")
            self._known[key] = run
            if not run.start_at_zero and not self._instances.get(key):
                start.append(run)
        return start

    def _tell_image_only(self, raw: RawObject) -> None:
        if raw.key in self._told:
            return
        self._told.add(raw.key)
        image = _first_container(raw).get("image", "?")
        self._announce(
            f"revision {raw.key} ({raw.origin or 'its file'}) has only an image ({image}), which "
            "`up` cannot run: to run it here, add a `command:` (and `args:`) to its container, "
            "e.g. `command: [python, -m, myapp]`; until then its requests get a 503."
        )

    # -- what the activator and the autoscaler ask ------------------------------------------

    def running(self) -> dict[ObjectKey, list[int]]:
        """The ports of the processes serving, per revision."""
        return {
            key: [i.port for i in insts if i.serving and not i.draining]
            for key, insts in self._instances.items()
            if any(i.serving and not i.draining for i in insts)
        }

    def pids(self) -> list[int]:
        return [i.proc.pid for insts in self._instances.values() for i in insts if i.proc]

    def specs(self) -> dict[ObjectKey, ScaleSpec]:
        return {key: run.scale for key, run in self._known.items()}

    def count(self, key: ObjectKey) -> int:
        return sum(not i.draining for i in self._instances.get(key, ()))

    def speaks_h2c(self, key: ObjectKey) -> bool:
        run = self._known.get(key)
        return run is not None and run.h2c

    def timeout_seconds(self, key: ObjectKey) -> float:
        """The revision's `timeoutSeconds`: how long the activator lets a cold start take."""
        run = self._known.get(key)
        return run.timeout_seconds if run else DEFAULT_TIMEOUT_SECONDS

    async def wake(self, key: ObjectKey) -> int:
        """The port of a serving process of this revision, starting one if it has none."""
        live = [i for i in self._instances.get(key, ()) if not i.draining]
        for inst in live:
            if inst.serving:
                return inst.port
        if key not in self._known:
            raise LookupError(f"revision {key} has no local `command` to run")
        if not live:
            live = [self._add(self._known[key])]
        # The first of those starting to be ready; each start's failure is its own.
        waits = [asyncio.ensure_future(_ready_or_failed(i)) for i in live]
        try:
            for first in asyncio.as_completed(waits):
                inst = await first
                if inst.serving:
                    return inst.port
        finally:
            for w in waits:
                w.cancel()
        raise RuntimeError(
            f"revision {key}: its process exited before it was ready (see {self.log_path(key)})"
        )

    def scale(self, key: ObjectKey, count: int) -> None:
        run = self._known.get(key)
        if run is None:
            return
        live = [i for i in self._instances.get(key, ()) if not i.draining]
        for _ in range(count - len(live)):
            self._add(run)
        # Stop those not yet serving first (nothing was sent to them), then the newest
        # (the activator hands out the oldest).
        newest_first = live[::-1]
        order = [i for i in newest_first if not i.serving] + [i for i in newest_first if i.serving]
        for inst in order[: max(0, len(live) - count)]:
            inst.draining = True
            self._spawn(self._stop(run, inst))

    async def start_all(self, runs: list[Runnable]) -> None:
        for run in runs:
            self.scale(run.key, run.scale.first_count)
        insts = [i for r in runs for i in self._instances.get(r.key, ())]
        await asyncio.gather(*(_ready_or_failed(i) for i in insts))

    def start_later(self, runs: list[Runnable]) -> None:
        """Start revisions a file edit added, without holding up the edit."""
        for run in runs:
            self.scale(run.key, run.scale.first_count)

    # -- one process ------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add(self, run: Runnable) -> Instance:
        inst = Instance(port=_free_port())
        self._instances.setdefault(run.key, []).append(inst)
        inst.task = self._spawn(self._run(run, inst))
        return inst

    async def _run(self, run: Runnable, inst: Instance) -> None:
        try:
            await self._start(run, inst)
        except Exception as e:
            log.error("revision %s did not start on port %d: %s", run.key, inst.port, e)
            if inst.proc is not None:
                await stop_group(inst.proc)
            self._forget(run.key, inst)
            return
        finally:
            inst.ready.set()
        assert inst.proc is not None
        code = await inst.proc.wait()
        if not inst.draining:  # it died on its own: take it off the gateway
            log.error(
                "revision %s: 127.0.0.1:%d exited with code %d (see %s)",
                run.key,
                inst.port,
                code,
                self.log_path(run.key),
            )
            inst.draining = True
            endpoints = slice_object(run.key, inst.port, h2c=run.h2c)
            self._publish({endpoints.ident: None})
            await stop_group(inst.proc)
            self._forget(run.key, inst)

    async def _start(self, run: Runnable, inst: Instance) -> None:
        env = {**os.environ, **dict(run.env), "PORT": str(inst.port), "K_REVISION": run.key.name}
        if run.configuration:
            env["K_CONFIGURATION"] = run.configuration
        log.info(
            "starting revision %s on 127.0.0.1:%d: %s", run.key, inst.port, " ".join(run.command)
        )
        spawned = time.perf_counter()
        with open(self.log_path(run.key), "ab") as out:
            inst.proc = await asyncio.create_subprocess_exec(
                *run.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own group: stopping it stops what it started, and Ctrl-C reaches
                # `up` alone, which stops the revisions drained and in order.
                start_new_session=True,
            )
        await until_ready(inst.port, inst.proc, run.probe)
        if inst.draining:
            raise RuntimeError("stopped before it was ready")
        if self.on_ready is not None:
            self.on_ready(run.key, spawned, time.perf_counter())
        # Ready: only now does the gateway learn of it.
        endpoints = slice_object(run.key, inst.port, h2c=run.h2c)
        self._publish({endpoints.ident: endpoints})
        inst.serving = True
        log.info("revision %s: 127.0.0.1:%d is ready (pid %d)", run.key, inst.port, inst.proc.pid)

    async def _stop(self, run: Runnable, inst: Instance) -> None:
        if inst.task is not None and not inst.serving:
            inst.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inst.task
        if inst.serving:
            endpoints = slice_object(run.key, inst.port, h2c=run.h2c)
            self._publish({endpoints.ident: None})
            if self._drained is not None:
                await self._drained(run.key, inst.port, run.timeout_seconds)
        if inst.proc is not None:
            await stop_group(inst.proc)
            log.info(
                "revision %s: stopped 127.0.0.1:%d (pid %d)", run.key, inst.port, inst.proc.pid
            )
        self._forget(run.key, inst)  # last: until it is gone, `close` can still stop it

    def _forget(self, key: ObjectKey, inst: Instance) -> None:
        insts = self._instances.get(key, [])
        if inst in insts:
            insts.remove(inst)
        if not insts:
            self._instances.pop(key, None)

    async def close(self) -> None:
        """Stop every process (the gateway is going away too: no drain)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        procs = [i.proc for insts in self._instances.values() for i in insts if i.proc]
        await asyncio.gather(*(stop_group(p) for p in procs), return_exceptions=True)
        self._instances.clear()


async def _ready_or_failed(inst: Instance) -> Instance:
    await inst.ready.wait()
    return inst


async def stop_group(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process's group, SIGKILL it after `grace`; whatever it started goes too."""

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    if proc.returncode is None:
        signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            pass
    signal_group(signal.SIGKILL)  # what the leader left behind in its group
    await proc.wait()
