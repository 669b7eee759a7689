"""`knative-xds validate`: read the files as `serve --config` does and print every problem."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import EXIT_PROBLEMS, add_ingress_class_flag

if TYPE_CHECKING:
    from ..serving import ServingStage


def add_parser(sub: Any) -> argparse.ArgumentParser:
    val = sub.add_parser(
        "validate",
        help="check Knative YAML and print every problem",
        description="Check a Knative YAML file or folder the way the control plane reads it. Exits 1 if any object has a problem.",
    )
    val.add_argument("path", type=Path, help="a YAML file or a folder of them")
    add_ingress_class_flag(val)
    return val


def run(args: argparse.Namespace) -> int:
    """Read the files as `serve --config` does, print what is skipped and every problem."""
    from ..app import ControlPlane, Settings
    from ..serving import RevisionHistory, ServingStage
    from ..sources.file import FileSource

    logging.getLogger("knative_xds").setLevel(logging.CRITICAL)
    plane = ControlPlane(Settings(ingress_class=args.ingress_class))
    source = FileSource(args.path)
    # Services and Configurations are reconciled as `up` and `serve` do, against an empty
    # history in memory: validating reads the files, it never changes a state folder.
    with RevisionHistory(":memory:") as history:
        stage = ServingStage(plane, history)
        asyncio.run(source.load_into(stage))
    skipped = source.ignored()
    for note in skipped:
        print(note)  # not a problem: a folder of `kubectl get` output holds other kinds
    for line in _reconciled(stage):
        print(line)
    problems = plane.problems()
    for p in problems:
        print(p)
    assert plane.first_load is not None
    served = len(plane.first_load.update.state.ingresses)
    services = len(stage.held())
    print(
        f"{args.path}: {served} Routes and KIngresses served, {services} Knative Services and "
        f"Configurations reconciled, {len(skipped)} objects skipped, {len(problems)} problems",
        file=sys.stderr,
    )
    return EXIT_PROBLEMS if problems else 0


def _reconciled(stage: ServingStage) -> list[str]:
    """One line per Service or Configuration: what it makes (or that it makes nothing)."""
    lines = []
    for raw in sorted(stage.held(), key=lambda r: (r.origin, r.kind, r.key)):
        made = stage.made(raw.ident)
        what = ", ".join(f"{kind} {key.name}" for kind, key in sorted(made)) or "nothing"
        lines.append(f"{raw.origin}: {raw.kind} {raw.key} ({raw.api_version}) makes {what}")
    return lines
