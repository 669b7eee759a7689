"""`knative-xds serve`: the control plane, on a watched folder or on a cluster."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    EXIT_CANNOT_RUN,
    add_gateway_flags,
    add_ingress_class_flag,
    add_state_dir_flag,
    log,
    open_history,
    port_number,
    settings,
    state_dir,
)

if TYPE_CHECKING:
    from ..app import ControlPlane
    from ..server.tls import TlsFiles
    from ..sources.base import Source
    from ..status.reporter import ReporterSettings


def add_parser(sub: Any) -> argparse.ArgumentParser:
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
        "--xds-port", type=port_number, default=18000, help="ADS gRPC port (default: 18000)"
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
    add_state_dir_flag(serve)
    serve.add_argument(
        "--health-port",
        type=port_number,
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
    add_ingress_class_flag(serve)
    _add_status_flags(serve)
    add_gateway_flags(serve, listen="0.0.0.0")
    return serve


def _add_status_flags(p: argparse.ArgumentParser) -> None:
    from ..status.conditions import PRIVATE_GATEWAY, PUBLIC_GATEWAY

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


async def run(args: argparse.Namespace) -> int:
    from ..admin.http import serve_admin
    from ..app import ControlPlane

    plane = ControlPlane(settings(args))
    # Health first: /healthz answers while the first state loads, /readyz once it has.
    health = None
    if args.health_port is not None:
        health = await serve_admin(plane, args.health_address, args.health_port)
    try:
        if args.kubernetes:
            return await _serve_kubernetes(plane, args)
        from ..serving import HistoryError, ServingSource
        from ..sources.file import FileSource

        state = state_dir(args)
        files = FileSource(args.config, state_dir=state)
        files.check()  # before listening: a path that is not there cannot run
        try:
            history = open_history(state, args.config)
        except HistoryError as e:
            log.error("%s", e)
            return EXIT_CANNOT_RUN
        plane.report_status(None)  # KIngresses from files: readiness on /debug/status
        try:
            # Knative Services and Configurations are reconciled here, as Knative's
            # controllers would (with --kubernetes, they do it themselves).
            await _listen_and_run(plane, ServingSource(files, history), args)
        finally:
            history.close()
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


def _serve_tls(args: argparse.Namespace) -> TlsFiles | None:
    """serve's TLS files, checked (TlsFileError, an OSError, names flag and file)."""
    from ..server.tls import TlsFileError, TlsFiles, check

    if args.tls_cert is None and args.tls_key is None:
        if args.client_ca is not None:
            raise TlsFileError("--client-ca needs --tls-cert and --tls-key: mTLS is TLS first")
        return None
    files = TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.client_ca, ca_flag="--client-ca")
    check(files)
    return files


async def _serve_kubernetes(plane: ControlPlane, args: argparse.Namespace) -> int:
    try:
        from ..sources.kube import ClusterConfigError, KubeSource, connect
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


def _status_settings(plane: ControlPlane, args: argparse.Namespace) -> ReporterSettings:
    from ..status.conditions import LoadBalancers
    from ..status.lease import LeaseSettings
    from ..status.reporter import ReporterSettings
    from ..status.writer import WriterSettings

    return ReporterSettings(
        lease=LeaseSettings(namespace=args.lease_namespace),
        writer=WriterSettings(
            ingress_class=plane.settings.ingress_class,
            balancers=LoadBalancers(public=args.public_gateway, private=args.private_gateway),
        ),
    )
