"""knative-xds command line: serve, bootstrap, validate, up, status.

Exit codes: 0 success, 1 the input has problems (validate), 2 bad usage,
3 could not run (a port in use, no Envoy binary, a file that is not there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, status_cli
from .envoy import EnvoyStats, bootstrap_yaml
from .model import ActivatorMode
from .model.kinds import DEFAULT_INGRESS_CLASS

if TYPE_CHECKING:  # the commands import what they run when they run: `bootstrap` stays quick
    from .app import ControlPlane
    from .sources.base import Source

log = logging.getLogger("knative_xds")

EXIT_PROBLEMS = 1
EXIT_CANNOT_RUN = 3

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


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:18000)")
    return host, int(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def _add_gateway_flags(p: argparse.ArgumentParser, *, listen: str) -> None:
    g = p.add_argument_group("gateway listeners (served to Envoy over LDS)")
    g.add_argument("--external-port", type=_port, default=8080, help="public hosts (default: 8080)")
    g.add_argument(
        "--internal-port", type=_port, default=8081, help="cluster-local hosts (default: 8081)"
    )
    g.add_argument(
        "--external-tls-port",
        type=_port,
        default=8443,
        help="public hosts over TLS, for KIngresses with spec.tls (default: 8443)",
    )
    g.add_argument(
        "--listen-address", default=listen, help=f"address the listeners bind (default: {listen})"
    )
    g.add_argument(
        "--trusted-hops",
        type=_count,
        default=0,
        metavar="N",
        help="load balancers in front of the gateway: how many X-Forwarded-For entries, "
        "from the right, Envoy trusts (default: 0, only the connection's own address)",
    )
    g.add_argument(
        "--activator",
        choices=[m.value for m in ActivatorMode],
        default=ActivatorMode.AT_ZERO.value,
        help="route through the activator only while a revision has no ready pod (at-zero, "
        "the default) or always (it then buffers bursts above zero too)",
    )


def _add_ingress_class_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ingress-class",
        default=DEFAULT_INGRESS_CLASS,
        metavar="CLASS",
        help="reconcile only the KIngresses whose networking.knative.dev/ingress.class "
        "annotation is this, as Knative writes it from config-network's ingress-class "
        f"(default: {DEFAULT_INGRESS_CLASS})",
    )


def _add_status_flags(p: argparse.ArgumentParser) -> None:
    from .status.conditions import PRIVATE_GATEWAY, PUBLIC_GATEWAY

    g = p.add_argument_group(
        "KIngress status (--kubernetes): what Knative is told once every gateway serves one"
    )
    g.add_argument(
        "--public-gateway",
        default=PUBLIC_GATEWAY,
        metavar="DNS_NAME",
        help=f"status.publicLoadBalancer domainInternal: the external gateway Service (default: {PUBLIC_GATEWAY})",
    )
    g.add_argument(
        "--private-gateway",
        default=PRIVATE_GATEWAY,
        metavar="DNS_NAME",
        help=f"status.privateLoadBalancer domainInternal: the cluster-local gateway Service (default: {PRIVATE_GATEWAY})",
    )
    g.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "knative-xds",
        help="where the Lease lives that picks the one replica writing status "
        "(default: $POD_NAMESPACE, else knative-xds); the holder is named by $POD_NAME",
    )


def _add_envoy_stats_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--envoy-stats",
        choices=[s.value for s in EnvoyStats],
        default=EnvoyStats.GATEWAY.value,
        help="which stats Envoy keeps: gateway (the default) leaves out those that grow "
        "with revisions and Routes (~120 per revision's cluster, ~10 per route table) and "
        "keeps the rest: server, cluster and listener managers, listeners, HTTP requests "
        "and responses, the xDS connection. all keeps them too, which makes a gateway "
        "with 10,000 revisions take ~5x as long to warm its clusters on ~70%% more "
        "memory. Pick all to debug one revision's upstream (its requests, connections, "
        "health).",
    )


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

    serve = sub.add_parser(
        "serve",
        help="run the control plane",
        description="Run the xDS control plane. Gateway Envoys connect to --xds-port over gRPC ADS (SotW or Delta).",
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="a Knative YAML file or a folder of them, watched for edits",
    )
    source.add_argument(
        "--kubernetes",
        action="store_true",
        help="watch Knative objects in the cluster (in-cluster config, else kubeconfig)",
    )
    serve.add_argument(
        "--kubernetes-input",
        choices=["ingress", "routes"],
        default="ingress",
        help="with --kubernetes, what to read: ingress (the default) reconciles the "
        "KIngresses of our --ingress-class, with the Services, Secrets and EndpointSlices "
        "they name, as Knative's networking layer does (Knative's Route controller writes "
        "them); routes reads Knative's Routes, Revisions and Configurations directly, "
        "with no KIngress in between",
    )
    serve.add_argument(
        "--xds-port", type=_port, default=18000, help="ADS gRPC port (default: 18000)"
    )
    serve.add_argument(
        "--xds-address",
        default=None,
        help="ADS bind address. Default: 127.0.0.1 with --config (ADS hands every route and "
        "endpoint to whoever connects, so only this host may), 0.0.0.0 with --kubernetes "
        "(gateways reach it from other pods: use --client-ca there)",
    )
    tls = serve.add_argument_group(
        "TLS on ADS (and CSDS): with --client-ca, only gateways holding a certificate it "
        "signed are served"
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM server certificate")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    tls.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA: require a client certificate signed by it (mTLS); needs --tls-cert",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="with --config: where the last good version of each file is kept, so a "
        "restart serves a file that no longer parses as it was (default: "
        "$XDG_STATE_HOME/knative-xds, else ~/.local/state/knative-xds)",
    )
    serve.add_argument(
        "--health-port",
        type=_port,
        default=None,
        help="serve the admin HTTP endpoints on this port: /healthz, /readyz (and /ready), "
        "/metrics (Prometheus), /debug/status[?node=ID], /debug/config_dump?node=ID",
    )
    serve.add_argument(
        "--health-address",
        default="127.0.0.1",
        help="admin HTTP bind address (default: 127.0.0.1; /debug shows every route, so "
        "open it wider only where probes need it, e.g. 0.0.0.0 in a pod)",
    )
    serve.add_argument(
        "--follow-public-endpoints",
        action="store_true",
        help="with --kubernetes: use the revisions' public service endpoints that Knative's ServerlessService manages (Knative picks activator or pods) instead of the private ones",
    )
    _add_ingress_class_flag(serve)
    _add_status_flags(serve)
    _add_gateway_flags(serve, listen="0.0.0.0")

    boot = sub.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap (YAML) that connects to the control plane",
        description="Print an Envoy bootstrap that takes all its configuration from knative-xds over ADS.",
    )
    boot.add_argument(
        "--xds-address",
        type=_host_port,
        required=True,
        metavar="HOST:PORT",
        help="where knative-xds serves xDS",
    )
    boot.add_argument(
        "--node-id",
        default="knative-gateway",
        help="this Envoy's node id (default: knative-gateway)",
    )
    boot.add_argument(
        "--admin-port",
        type=_port,
        default=9901,
        help="Envoy admin port on 127.0.0.1 (default: 9901)",
    )
    boot.add_argument(
        "--delta",
        action="store_true",
        help="use incremental (Delta) ADS instead of State of the World",
    )
    _add_envoy_stats_flag(boot)
    status_cli.add_client_tls_flags(boot)
    status_cli.add_parser(sub)

    val = sub.add_parser(
        "validate",
        help="check Knative YAML and print every problem",
        description="Check a Knative YAML file or folder the way the control plane reads it. Exits 1 if any object has a problem.",
    )
    val.add_argument("path", type=Path, help="a YAML file or a folder of them")
    _add_ingress_class_flag(val)

    up = sub.add_parser(
        "up",
        help="run the control plane, the bundled Envoy and the example's apps together",
        description="Run everything on this machine in the foreground: the control plane on a watched YAML file or folder, the bundled Envoy, every revision whose container has a local `command`, and a local activator that wakes revisions at zero. Ctrl-C stops them all.",
    )
    up.add_argument("path", type=Path, help="a Knative YAML file or a folder of them")
    up.add_argument("--xds-port", type=_port, default=0, help="ADS port (default: any free port)")
    up.add_argument(
        "--admin-port", type=_port, default=9901, help="Envoy admin port (default: 9901)"
    )
    up.add_argument("--delta", action="store_true", help="connect Envoy with Delta ADS")
    _add_envoy_stats_flag(up)
    _add_ingress_class_flag(up)
    _add_gateway_flags(up, listen="127.0.0.1")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "bootstrap":
            host, port = args.xds_address
            sys.stdout.write(
                bootstrap_yaml(
                    xds_host=host,
                    xds_port=port,
                    node_id=args.node_id,
                    admin_port=args.admin_port,
                    delta=args.delta,
                    stats=EnvoyStats(args.envoy_stats),
                    tls=_bootstrap_tls(args),
                )
            )
            return 0
        if args.command == "status":
            return status_cli.run(args)
        if args.command == "validate":
            return _validate(args)
        fix_mmap_threshold()
        runner = _serve if args.command == "serve" else _up
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


async def _until_signalled(job) -> int:
    """Run `job`; SIGTERM (as Kubernetes sends) cancels it like Ctrl-C, so cleanup runs."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await job
    except asyncio.CancelledError:
        log.info("stopped")
        return 0


def _validate(args: argparse.Namespace) -> int:
    """Read the files as `serve --config` does, print what is skipped and every problem."""
    from .app import ControlPlane, Settings
    from .sources.file import FileSource

    logging.getLogger("knative_xds").setLevel(logging.CRITICAL)
    plane = ControlPlane(Settings(ingress_class=args.ingress_class))
    source = FileSource(args.path)
    asyncio.run(source.load_into(plane))
    skipped = source.ignored()
    for note in skipped:
        print(note)  # not a problem: a folder of `kubectl get` output holds other kinds
    problems = plane.problems()
    for p in problems:
        print(p)
    assert plane.first_load is not None
    served = len(plane.first_load.update.state.ingresses)
    print(
        f"{args.path}: {served} Routes and KIngresses served, {len(skipped)} objects skipped, "
        f"{len(problems)} problems",
        file=sys.stderr,
    )
    return EXIT_PROBLEMS if problems else 0


def _settings(args: argparse.Namespace):
    from .app import Settings
    from .translate import GatewayConfig

    return Settings(
        gateway=GatewayConfig(
            listen_address=args.listen_address,
            external_port=args.external_port,
            internal_port=args.internal_port,
            external_tls_port=args.external_tls_port,
            trusted_hops=args.trusted_hops,
        ),
        activator_mode=ActivatorMode(args.activator),
        follow_public_endpoints=getattr(args, "follow_public_endpoints", False),
        ingress_class=args.ingress_class,
        # From a cluster, an empty list is the truth (a fresh install has no KIngress yet).
        hold_empty_start=not getattr(args, "kubernetes", False),
    )


async def _serve(args: argparse.Namespace) -> int:
    from .admin.http import serve_admin
    from .app import ControlPlane

    plane = ControlPlane(_settings(args))
    # Health first: /healthz answers while the first state loads, /readyz once it has.
    health = None
    if args.health_port is not None:
        health = await serve_admin(plane, args.health_address, args.health_port)
    try:
        if args.kubernetes:
            return await _serve_kubernetes(plane, args)
        from .sources.file import FileSource
        from .sources.file_state import default_state_dir

        source = FileSource(args.config, state_dir=args.state_dir or default_state_dir())
        source.check()  # before listening: a path that is not there cannot run
        plane.report_status(None)  # KIngresses from files: readiness on /debug/status
        await _listen_and_run(plane, source, args)
    finally:
        await plane.stop()
        if health is not None:
            await health.close()
    return 0


async def _listen_and_run(plane: ControlPlane, source: Source, args: argparse.Namespace) -> None:
    # Listening first: a gateway that connects meanwhile is sent each part of the first
    # state as soon as it is complete (clusters before route tables), and nothing before.
    address = args.xds_address or ("0.0.0.0" if args.kubernetes else "127.0.0.1")
    await plane.start_xds(f"{address}:{args.xds_port}", _serve_tls(args))
    await plane.run(source)


def _serve_tls(args: argparse.Namespace):
    """serve's TLS files, checked (TlsFileError, an OSError, names flag and file)."""
    from .server.tls import TlsFileError, TlsFiles, check

    if args.tls_cert is None and args.tls_key is None:
        if args.client_ca is not None:
            raise TlsFileError("--client-ca needs --tls-cert and --tls-key: mTLS is TLS first")
        return None
    files = TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.client_ca, ca_flag="--client-ca")
    check(files)
    return files


def _bootstrap_tls(args: argparse.Namespace):
    """The files are where Envoy will read them (a pod's mounted Secret), so they are
    not looked at here."""
    files = status_cli.client_tls(args)
    if files is not None and files.ca is None:
        raise OSError("--tls-cert/--tls-key need --tls-ca: the CA Envoy verifies knative-xds by")
    if files is not None and (files.cert is None) != (files.key is None):
        raise OSError("--tls-cert and --tls-key go together: a certificate and its private key")
    return files


async def _serve_kubernetes(plane: ControlPlane, args: argparse.Namespace) -> int:
    try:
        from .sources.kube import ClusterConfigError, KubeSource, connect
    except ImportError:
        log.error("--kubernetes needs the Kubernetes client: pip install 'knative-xds[kubernetes]'")
        return EXIT_CANNOT_RUN
    try:
        async with connect() as api:  # in-cluster config, else $KUBECONFIG or ~/.kube/config
            source = KubeSource(
                api,
                input=args.kubernetes_input,
                follow_public_endpoints=plane.settings.follow_public_endpoints,
            )
            if args.kubernetes_input == "ingress":
                plane.report_status(api, _status_settings(plane, args))
            await _listen_and_run(plane, source, args)
    except ClusterConfigError as e:
        log.error("%s", e)
        return EXIT_CANNOT_RUN
    return 0


def _status_settings(plane: ControlPlane, args: argparse.Namespace):
    from .status.conditions import LoadBalancers
    from .status.lease import LeaseSettings
    from .status.reporter import ReporterSettings
    from .status.writer import WriterSettings

    return ReporterSettings(
        lease=LeaseSettings(namespace=args.lease_namespace),
        writer=WriterSettings(
            ingress_class=plane.settings.ingress_class,
            balancers=LoadBalancers(public=args.public_gateway, private=args.private_gateway),
        ),
    )


async def _up(args: argparse.Namespace) -> int:
    from .local.up import run_up

    return await run_up(args, _settings(args))


if __name__ == "__main__":
    sys.exit(main())
