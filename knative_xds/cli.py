"""knative-xds command line: serve, bootstrap, validate, up, status.

This module builds the parser and dispatches; each command lives in `commands/`.
Exit codes: 0 success, 1 the input has problems (validate), 2 bad usage,
3 could not run (a port in use, no Envoy binary, a file that is not there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from . import __version__
from .commands import bootstrap, serve, status, up, validate
from .commands.common import EXIT_CANNOT_RUN, configure_logging, log

# `serve` as `main` runs it, without the signal handling: tests drive it on their loop.
_serve = serve.run

DESCRIPTION = """\
An Envoy xDS control plane for Knative Serving. It reads Knative's KIngresses
(with the Services, Secrets and EndpointSlices they name), or its Routes and
Revisions directly, from YAML files or from a cluster, and serves gateway
Envoys their listeners, weighted routes, clusters and endpoints over ADS. A
revision with no ready pods is routed through the activator; an edit to a
Route's traffic shifts traffic in milliseconds.
"""

EPILOG = """\
examples:
  knative-xds up examples/hello            run the example: control plane, Envoy and the apps
  knative-xds serve --config routes/       the control plane alone, on a watched folder
  knative-xds serve --kubernetes           in a cluster: serve the KIngresses of our class
  knative-xds bootstrap --xds-address 127.0.0.1:18000 > envoy.yaml
  knative-xds validate routes/             check the input, print every problem
  knative-xds status                       connected gateways: what each accepted or rejected
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knative-xds",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"knative-xds {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in --help.
    for command in (serve, bootstrap, status, validate, up):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "bootstrap":
            return bootstrap.run(args)
        if args.command == "status":
            return status.run(args)
        if args.command == "validate":
            return validate.run(args)
        fix_mmap_threshold()
        runner = serve.run if args.command == "serve" else up.run
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_until_signalled(runner(args)))
        return 0
    except (OSError, ExceptionGroup) as e:
        # A task group (the plane's, `up`'s) raises its tasks' errors as a group.
        errors = _os_errors(e)
        if not errors:
            raise
        for error in errors:
            print(f"knative-xds: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN


def _os_errors(error: BaseException) -> list[OSError]:
    """The OSErrors `error` is, or is a group of; [] if it holds anything else."""
    if isinstance(error, OSError):
        return [error]
    if isinstance(error, BaseExceptionGroup):
        found = [_os_errors(e) for e in error.exceptions]
        return [e for errors in found for e in errors] if all(found) else []
    return []


# glibc's mallopt: requests this large or larger are served by mmap and unmapped on free.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at 128 KiB, so freed large buffers go back to the system.

    A response that carries a whole snapshot set is a multi-megabyte bytes object
    (joined per stream, copied again by gRPC), freed once sent. After freeing such a
    block glibc raises its threshold (up to 32 MiB), so later ones come from the heap,
    which keeps the memory. Measured with 100 streams at 10,000 revisions: RSS 305 MB
    with the dynamic threshold, 276 MB with it fixed. Setting it turns the adjustment off.

    Returns whether it took effect: not without glibc (musl, macOS), nor when the
    operator has set the threshold through the environment, which then wins.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except (OSError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1


async def _until_signalled(job: Coroutine[Any, Any, int]) -> int:
    """Run `job`; SIGTERM (as Kubernetes sends) cancels it like Ctrl-C, so cleanup runs."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    from .admin.loop_probe import start_from_env  # off unless the benchmarks set its variable

    start_from_env()
    try:
        return await job
    except asyncio.CancelledError:
        log.info("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
