"""`knative-xds bootstrap`: an Envoy bootstrap that takes everything from us over ADS."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..envoy import HEAP_PER_REVISION_BYTES, MAX_HEAP_BYTES, EnvoyStats, bootstrap_yaml
from .common import (
    add_client_tls_flags,
    add_envoy_stats_flag,
    byte_size,
    client_tls,
    host_port,
    port_number,
)

if TYPE_CHECKING:
    from ..server.tls import TlsFiles


def add_parser(sub: Any) -> argparse.ArgumentParser:
    boot = sub.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap (YAML) that connects to the control plane",
        description="Print an Envoy bootstrap that takes all its configuration from knative-xds over ADS.",
    )
    boot.add_argument(
        "--xds-address",
        type=host_port,
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
        type=port_number,
        default=9901,
        help="Envoy admin port on 127.0.0.1 (default: 9901)",
    )
    boot.add_argument(
        "--delta",
        action="store_true",
        help="use incremental (Delta) ADS instead of State of the World",
    )
    boot.add_argument(
        "--max-heap",
        type=byte_size,
        default=MAX_HEAP_BYTES,
        metavar="SIZE",
        help=(
            "the heap at which Envoy refuses new requests (503 'envoy overloaded') rather "
            "than be killed for memory; set it to the gateway container's memory limit. "
            f"Envoy holds about {HEAP_PER_REVISION_BYTES // 1000} KB per revision, so the "
            f"default ({MAX_HEAP_BYTES >> 30}Gi) serves some "
            f"{MAX_HEAP_BYTES // HEAP_PER_REVISION_BYTES // 1000 * 1000:,} revisions "
            "(e.g. 4Gi, 512Mi)"
        ),
    )
    add_envoy_stats_flag(boot)
    add_client_tls_flags(boot)
    return boot


def run(args: argparse.Namespace) -> int:
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
            max_heap_bytes=args.max_heap,
        )
    )
    return 0


def _bootstrap_tls(args: argparse.Namespace) -> TlsFiles | None:
    """The files are where Envoy will read them (a pod's mounted Secret), so they are
    not looked at here."""
    files = client_tls(args)
    if files is not None and files.ca is None:
        raise OSError("--tls-cert/--tls-key need --tls-ca: the CA Envoy verifies knative-xds by")
    if files is not None and (files.cert is None) != (files.key is None):
        raise OSError("--tls-cert and --tls-key go together: a certificate and its private key")
    return files
