"""`knative-xds up`: the control plane, the bundled Envoy and the example's apps together."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import (
    EXIT_CANNOT_RUN,
    add_envoy_stats_flag,
    add_gateway_flags,
    add_ingress_class_flag,
    add_state_dir_flag,
    log,
    open_history,
    port_number,
    settings,
    state_dir,
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    up = sub.add_parser(
        "up",
        help="run the control plane, the bundled Envoy and the example's apps together",
        description="Run everything on this machine in the foreground: the control plane on a watched YAML file or folder, the bundled Envoy, every revision whose container has a local `command`, a local activator that wakes revisions at zero, and an autoscaler that starts more processes of a revision under load and scales it to zero when idle. Ctrl-C stops them all.",
    )
    up.add_argument("path", type=Path, help="a Knative YAML file or a folder of them")
    up.add_argument(
        "--xds-port", type=port_number, default=0, help="ADS port (default: any free port)"
    )
    up.add_argument(
        "--admin-port", type=port_number, default=9901, help="Envoy admin port (default: 9901)"
    )
    up.add_argument("--delta", action="store_true", help="connect Envoy with Delta ADS")
    up.add_argument(
        "--scale-to-zero-grace",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long a revision with no traffic keeps a process before it scales to zero "
        "(Knative's scale-to-zero-grace-period; default: 30)",
    )
    up.add_argument(
        "--activator-queue",
        type=_count,
        default=1000,
        metavar="N",
        help="how many requests the activator holds per revision while it wakes (or, with a "
        "containerConcurrency, waits for a free slot); past that, a 503 (default: 1000)",
    )
    add_state_dir_flag(up)
    up.add_argument(
        "--reset",
        action="store_true",
        help="forget the revision history of this path first: the Services' revisions "
        "start at 00001 again",
    )
    add_envoy_stats_flag(up)
    add_ingress_class_flag(up)
    add_gateway_flags(up, listen="127.0.0.1")
    return up


async def run(args: argparse.Namespace) -> int:
    from ..local.up import run_up
    from ..serving import HistoryError
    from ..serving.stage import STORE_ERRORS

    args.state_dir = state_dir(args)  # the file source's last-good copies go there too
    try:
        history = open_history(args.state_dir, args.path)
    except HistoryError as e:
        log.error("%s", e)
        return EXIT_CANNOT_RUN
    if args.reset:
        try:
            history.reset()
        except STORE_ERRORS as e:
            history.close()
            log.error("%s", e)
            return EXIT_CANNOT_RUN
        print(f"revision history cleared ({history.path})", file=sys.stderr)
    try:
        return await run_up(args, settings(args), history=history)
    finally:
        history.close()
