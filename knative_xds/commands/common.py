"""What several commands share: exit codes, flag types, flag groups, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..envoy import EnvoyStats
from ..model import ActivatorMode
from ..model.kinds import DEFAULT_INGRESS_CLASS

if TYPE_CHECKING:
    from ..app import Settings
    from ..server.tls import TlsFiles
    from ..serving import RevisionHistory

# Exit codes: 0 success, 1 the input has problems (validate), 2 bad usage (argparse),
# 3 could not run (a port in use, no Envoy binary, a file that is not there).
EXIT_PROBLEMS = 1
EXIT_CANNOT_RUN = 3

# The name records are logged under: every command logs as the package does.
log = logging.getLogger("knative_xds")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:18000)")
    return host, int(port)


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def byte_size(text: str) -> int:
    """Bytes, as Kubernetes writes memory: 4294967296, 4Gi, 512Mi, 4G."""
    digits = text.rstrip("KMGi")
    unit = text[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS or int(digits) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (e.g. 4Gi, 512Mi, 4G or 4294967296)"
        )
    return int(digits) * _UNITS[unit]


def add_gateway_flags(p: argparse.ArgumentParser, *, listen: str) -> None:
    """The listeners served to Envoy, as `serve` and `up` take them."""
    g = p.add_argument_group("gateway listeners (served to Envoy over LDS)")
    g.add_argument(
        "--external-port", type=port_number, default=8080, help="public hosts (default: 8080)"
    )
    g.add_argument(
        "--internal-port",
        type=port_number,
        default=8081,
        help="cluster-local hosts (default: 8081)",
    )
    g.add_argument(
        "--external-tls-port",
        type=port_number,
        default=8443,
        help="public hosts over TLS, for KIngresses with spec.tls (default: 8443)",
    )
    g.add_argument(
        "--internal-tls-port",
        type=port_number,
        default=8444,
        help="cluster-local hosts over TLS, with config-xds cluster-cert-secret "
        "(default: 8444, as Kourier)",
    )
    g.add_argument(
        "--listen-address", default=listen, help=f"address the listeners bind (default: {listen})"
    )
    g.add_argument(
        "--trusted-hops",
        type=count,
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


def add_ingress_class_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ingress-class",
        default=DEFAULT_INGRESS_CLASS,
        metavar="CLASS",
        help="reconcile only the KIngresses whose networking.knative.dev/ingress.class "
        "annotation is this, as Knative writes it from config-network's ingress-class "
        f"(default: {DEFAULT_INGRESS_CLASS})",
    )


def add_envoy_stats_flag(p: argparse.ArgumentParser) -> None:
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


def add_client_tls_flags(p: argparse.ArgumentParser) -> None:
    """--tls-ca/--tls-cert/--tls-key, as `bootstrap` and `status` take them."""
    g = p.add_argument_group("TLS to the control plane (serve --tls-cert/--client-ca)")
    g.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA the control plane's certificate is verified against (turns TLS on)",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM client certificate, for a control plane started with --client-ca",
    )
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")


def add_state_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="with files: where the last good version of each file is kept, so a "
        "restart serves a file that no longer parses as it was, and the revision history "
        "of the Knative Services and Configurations read, so a restart keeps revision "
        "numbers (default: $XDG_STATE_HOME/knative-xds, else ~/.local/state/knative-xds)",
    )


def state_dir(args: argparse.Namespace) -> Path:
    from ..sources.file_state import default_state_dir

    return args.state_dir or default_state_dir()


def open_history(state: Path, config: Path) -> RevisionHistory:
    """The revision history of `config` in the state folder, open (HistoryError if not)."""
    from ..serving import history_for

    return history_for(state, config).open()


def client_tls(args: argparse.Namespace) -> TlsFiles | None:
    from ..server.tls import TlsFiles

    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return None
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


def settings(args: argparse.Namespace) -> Settings:
    """The control plane's settings from `serve`'s or `up`'s flags."""
    from ..app import Settings
    from ..translate import GatewayConfig

    return Settings(
        gateway=GatewayConfig(
            listen_address=args.listen_address,
            external_port=args.external_port,
            internal_port=args.internal_port,
            external_tls_port=args.external_tls_port,
            internal_tls_port=args.internal_tls_port,
            trusted_hops=args.trusted_hops,
        ),
        activator_mode=ActivatorMode(args.activator),
        follow_public_endpoints=getattr(args, "follow_public_endpoints", False),
        ingress_class=args.ingress_class,
        # From a cluster, an empty list is the truth (a fresh install has no KIngress yet).
        hold_empty_start=not getattr(args, "kubernetes", False),
    )
