"""`knative-xds up`: the control plane, the bundled Envoy and the revisions, in the foreground.

Order matters for a first request that works: the activator and the revisions
that start above zero are up before the first state is published, so Envoy's
first configuration already has somewhere to send every route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from .. import synth
from ..app import ControlPlane, Settings
from ..envoy import EnvoyStats, bootstrap_yaml, require_envoy, start_envoy, wait_ready
from ..model import RawObject, State, Visibility
from ..sources.file import FileBatch, FileSource
from .activator import LocalActivator
from .runner import LocalRevisions, slice_object

log = logging.getLogger(__name__)


def _local_slices(activator_port: int, revisions: LocalRevisions) -> dict:
    """The EndpointSlices Knative would have: the activator's, and each running revision's."""
    slices = [RawObject.from_dict(synth.activator_slice("127.0.0.1", activator_port), "local")]
    slices += [slice_object(key, port) for key, port in revisions.running().items()]
    return {raw.ident: raw for raw in slices}


def where_to_send(state: State, settings: Settings) -> str:
    g = settings.gateway
    lines = []
    for route in sorted(state.routes.values(), key=lambda r: r.key):
        for rule in route.rules:
            port = g.external_port if rule.visibility is Visibility.EXTERNAL else g.internal_port
            split = ", ".join(f"{s.revision} {s.percent}%" for s in rule.splits)
            lines.append(
                f"  curl -H 'Host: {rule.hosts[0]}' http://{g.listen_address}:{port}/    # {split}"
            )
    return (
        "\n".join(lines) or "  (no valid routes yet: fix the problems above, the file is watched)"
    )


async def run_up(args: argparse.Namespace, settings: Settings) -> int:
    require_envoy()  # fail before starting anything if there is no Envoy to run
    plane = ControlPlane(settings)
    revisions = LocalRevisions(plane.pipeline.submit)
    activator = LocalActivator(revisions)
    envoy = None
    try:
        source = FileSource(args.path)
        batch = source.read_all()
        activator_port = await activator.start()
        await revisions.start_all(revisions.observe(batch.changes))
        local = _local_slices(activator_port, revisions)
        loaded = await plane.load(
            FileBatch(changes={**batch.changes, **local}, problems=batch.problems)
        )
        for problem in plane.pipeline.problems():
            print(f"problem: {problem}", file=sys.stderr)
        xds_port = await plane.start_xds(f"127.0.0.1:{args.xds_port}")
        envoy, workdir = await _start_envoy(xds_port, args)
        state = loaded.update.state
        print(
            f"\nknative-xds is up. Envoy listens on {settings.gateway.listen_address}:"
            f"{settings.gateway.external_port} (external) and :{settings.gateway.internal_port} "
            f"(cluster-local); admin on 127.0.0.1:{args.admin_port}.\nTry:\n"
            f"{where_to_send(state, settings)}\n\nEdit {args.path} and the routes follow. "
            f"Envoy's log: {workdir / 'envoy.log'}. Ctrl-C stops everything.\n",
            file=sys.stderr,
        )

        def on_batch(b: FileBatch) -> None:
            revisions.start_later(revisions.observe(b.changes))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(plane.follow(source, on_batch))
            tasks.create_task(_exit_with(envoy))
    finally:
        if envoy is not None and envoy.returncode is None:
            envoy.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await envoy.wait()
        await revisions.close()
        activator.close()
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
