"""`knative-xds up`: the control plane, the bundled Envoy and the revisions, in the foreground.

The control plane runs on a `LocalSource`: the watched files, with Knative's
part played on this machine (revisions with a local `command` run as
processes, the activator wakes them, the autoscaler sizes them from what
Envoy's admin says is in flight, and each ready process's EndpointSlice joins
the objects read). A revision with a `containerConcurrency` keeps the activator
in its path, as Knative's does: its processes' slices are withheld from the
gateway, and the activator's throttle sends each request to a process with a
free slot. Order matters for a first request that works: the activator and the
revisions that start above zero are up before the first state is published, so
Envoy's first configuration already has somewhere to send every route.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from .. import synth
from ..app import ControlPlane, Settings
from ..envoy import (
    EnvoyStats,
    bootstrap_yaml,
    require_envoy,
    start_envoy,
    stop_process,
    wait_ready,
)
from ..model import ObjectKey, RawObject, State, Visibility
from ..serving import RevisionHistory, ServingStage
from ..sources.base import Changes, Sink, SinkInFront
from ..sources.file import FileSource
from .activator import QUEUE_DEPTH, LocalActivator, h2c_available
from .autoscaler import DEFAULT_GRACE, Autoscaler, EnvoyAdmin, Load
from .runner import LocalRevisions, Runnable, slice_object
from .throttle import Throttle

log = logging.getLogger(__name__)


def _local_slices(activator_ports: tuple[int, int | None], revisions: LocalRevisions) -> dict:
    """The EndpointSlices Knative would have: the activator's (its HTTP/1.1 and h2c ports),
    and each running revision's (but a throttled one's: the activator stays its endpoint)."""
    slices = [RawObject.from_dict(synth.activator_slice("127.0.0.1", *activator_ports), "local")]
    slices += [
        slice_object(key, port, h2c=revisions.speaks_h2c(key))
        for key, ports in revisions.running().items()
        if not _limit(revisions, key)
        for port in ports
    ]
    return {raw.ident: raw for raw in slices}


def _limit(revisions: LocalRevisions, key: ObjectKey) -> int:
    """The revision's containerConcurrency (0: none), a hard limit the activator holds."""
    spec = revisions.specs().get(key)
    return spec.container_concurrency if spec is not None else 0


def _revision_of(endpoints: RawObject) -> ObjectKey:
    return ObjectKey(endpoints.key.namespace, endpoints.labels.get(synth.REVISION_LABEL, ""))


class LocalSource:
    """The files, with revisions run here: a `Source`, like the file source it wraps.

    The revision processes and the activator live as long as `run`. With a `history`,
    Knative Services and Configurations are reconciled between the files and the rest.
    """

    def __init__(
        self,
        path: Path,
        *,
        state_dir: Path | None = None,
        history: RevisionHistory | None = None,
        admin_port: int = 9901,
        grace: float = DEFAULT_GRACE,
        queue_depth: int = QUEUE_DEPTH,
    ) -> None:
        self.files = FileSource(path, state_dir=state_dir)
        self.history = history
        # Envoy's admin: what the autoscaler samples and what says a process is drained.
        self.envoy = EnvoyAdmin(admin_port)
        # The revisions' output, one file each; kept after `up` ends, like Envoy's log.
        self.log_dir = Path(tempfile.mkdtemp(prefix="knative-xds-revisions-"))
        self.revisions = LocalRevisions(
            self._publish, log_dir=self.log_dir, drained=self.envoy.drained
        )
        self.throttle = Throttle(
            lambda key: _limit(self.revisions, key),
            lambda key: self.revisions.running().get(key, []),
            self.revisions.wake,
        )
        self.autoscaler = Autoscaler(self.revisions, self.envoy.loads, grace=grace, held=self._held)
        self.activator = LocalActivator(
            self.revisions,
            queue_depth=queue_depth,
            on_demand=self.autoscaler.demand,
            throttle=self.throttle,
        )
        self._sink: _StartingRevisions | None = None
        self._withheld: set[tuple[str, ObjectKey]] = set()

    def _held(self, key: ObjectKey) -> Load:
        """What the activator holds for a throttled revision: every request of it."""
        active = self.throttle.in_flight(key) + self.activator.waiting(key)
        return Load(active, self.throttle.requests(key))

    async def run(self, sink: Sink, ready: asyncio.Event) -> None:
        self.files.check()
        activator = self.activator
        try:
            port = await activator.start(h2c_port=0 if h2c_available() else None)
            self._sink = _StartingRevisions(sink, self.revisions, (port, activator.h2c_port))
            files_sink: Sink = self._sink
            if self.history is not None:
                files_sink = ServingStage(self._sink, self.history)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.autoscaler.run(), name="autoscaler")
                tasks.create_task(self.files.run(files_sink, ready), name="files")
        finally:
            await self.revisions.close()
            await activator.close()

    def _publish(self, changes: Changes) -> None:
        """A revision's process listens (or is gone): its EndpointSlice changes (withheld
        for a throttled revision, whose requests all pass the activator)."""
        assert self._sink is not None, "no revision runs before the source does"
        out: dict[tuple[str, ObjectKey], RawObject | None] = {}
        for ident, raw in changes.items():
            if raw is None:
                if ident in self._withheld:
                    self._withheld.discard(ident)
                else:
                    out[ident] = None
            elif _limit(self.revisions, _revision_of(raw)):
                self._withheld.add(ident)
            else:
                out[ident] = raw
        if out:
            self._sink.publish(out)
        self.throttle.changed()  # processes came or went: requests waiting for a slot look


class _StartingRevisions(SinkInFront):
    """A sink in front of the plane's: starts the revisions the objects name, and adds the
    EndpointSlices of the activator and of every revision running."""

    def __init__(
        self, sink: Sink, revisions: LocalRevisions, activator_ports: tuple[int, int | None]
    ) -> None:
        super().__init__(sink)
        self._revisions = revisions
        self._activator_ports = activator_ports
        self._to_start: list[Runnable] = []
        self._loaded = False

    def stage(self, changes: Changes) -> None:
        self._to_start += self._revisions.observe(changes)
        self._sink.stage(changes)

    async def load(self, changes: Changes | None = None) -> object:
        if changes:
            self.stage(changes)
        await self._revisions.start_all(self._to_start)
        self._to_start = []
        local = _local_slices(self._activator_ports, self._revisions)
        # From here a revision's slice is submitted: the sink applies it after the load.
        self._loaded = True
        return await self._sink.load(local)

    def submit(self, changes: Changes) -> None:
        self._revisions.start_later(self._revisions.observe(changes))
        self._sink.submit(changes)

    def publish(self, changes: Changes) -> None:
        # Before the first load a started revision's slice joins it: submitted, it could
        # be applied before the load and publish a first state without the activator.
        if self._loaded:
            self._sink.submit(changes)
        else:
            self._sink.stage(changes)


def where_to_send(state: State, settings: Settings) -> str:
    g = settings.gateway
    lines = []
    for ingress in sorted(state.ingresses.values(), key=lambda i: i.key):
        for rule in ingress.rules:
            port = g.external_port if rule.visibility is Visibility.EXTERNAL else g.internal_port
            # The paths a plain request can take (those matching headers, such as a tag
            # header's or Knative's probe, are left out), each with where it goes.
            for path in (p for p in rule.paths if not p.match_headers):
                split = ", ".join(f"{s.backend} {s.percent}%" for s in path.splits)
                url = f"http://{g.listen_address}:{port}{path.prefix or '/'}"
                lines.append(f"  curl -H 'Host: {rule.hosts[0]}' {url}    # {split}")
    return (
        "\n".join(lines) or "  (no valid routes yet: fix the problems above, the file is watched)"
    )


async def run_up(
    args: argparse.Namespace, settings: Settings, history: RevisionHistory | None = None
) -> int:
    require_envoy()  # fail before starting anything if there is no Envoy to run
    plane = ControlPlane(settings)
    source = LocalSource(
        args.path,
        state_dir=getattr(args, "state_dir", None),
        history=history,
        admin_port=args.admin_port,
        grace=getattr(args, "scale_to_zero_grace", DEFAULT_GRACE),
        queue_depth=getattr(args, "activator_queue", QUEUE_DEPTH),
    )
    source.files.check()
    ready = asyncio.Event()
    envoy = None
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(plane.run(source, ready), name="control plane")
            await ready.wait()
            for problem in plane.problems():
                print(f"problem: {problem}", file=sys.stderr)
            xds_port = await plane.start_xds(f"127.0.0.1:{args.xds_port}")
            envoy, workdir = await _start_envoy(xds_port, args)
            source.envoy.pid = envoy.pid  # its connections tell when a process is drained
            assert plane.first_load is not None
            state = plane.first_load.update.state
            print(
                f"\nknative-xds is up. Envoy listens on {settings.gateway.listen_address}:"
                f"{settings.gateway.external_port} (external) and :{settings.gateway.internal_port} "
                f"(cluster-local); admin on 127.0.0.1:{args.admin_port}.\nTry:\n"
                f"{where_to_send(state, settings)}\n\nEdit {args.path} and the routes follow. "
                f"Envoy's log: {workdir / 'envoy.log'}. Ctrl-C stops everything.\n",
                file=sys.stderr,
            )
            tasks.create_task(_exit_with(envoy), name="envoy")
    finally:
        if envoy is not None:
            await stop_process(envoy)
        await plane.stop(0)
    return 0


async def _start_envoy(xds_port: int, args: argparse.Namespace):
    workdir = Path(tempfile.mkdtemp(prefix="knative-xds-"))
    boot = workdir / "envoy.yaml"
    boot.write_text(
        bootstrap_yaml(
            xds_host="127.0.0.1",
            xds_port=xds_port,
            admin_port=args.admin_port,
            delta=args.delta,
            stats=EnvoyStats(args.envoy_stats),
        )
    )
    envoy = await start_envoy(boot, log_path=workdir / "envoy.log")
    try:
        await wait_ready(args.admin_port, envoy)
    except (RuntimeError, TimeoutError) as e:
        log_text = (workdir / "envoy.log").read_text(errors="replace")[-2000:]
        raise OSError(
            f"Envoy did not start ({e}); is port {args.admin_port} or a listener port in use?\n{log_text}"
        ) from None
    return envoy, workdir


async def _exit_with(envoy: asyncio.subprocess.Process) -> None:
    code = await envoy.wait()
    raise OSError(f"Envoy exited with code {code}")
