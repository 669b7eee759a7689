"""`knative-xds status`: which gateways are connected, and what each was sent and accepted.

It asks the control plane's CSDS (server/csds.py) on the ADS address, so it needs
nothing but that port (and, when ADS is mTLS, a client certificate the control
plane trusts). The peer address, the protocol (SotW or Delta) and the version last
sent per type come from the node metadata our CSDS adds to each `ClientConfig`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from ..resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, SECRET
from .common import add_client_tls_flags, client_tls

if TYPE_CHECKING:  # gRPC loads when the command runs: every other command starts quicker
    from envoy.service.status.v3 import csds_pb2

    from ..server.tls import TlsFiles

EXIT_UNREACHABLE = 2
DEFAULT_ADDRESS = "127.0.0.1:18000"

TYPE_NAMES = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    LISTENER: "listeners",
    ROUTE: "routes",
    SCOPED_ROUTE: "scopes",
    SECRET: "secrets",
}
# CSDS ConfigStatus by number (csds.proto): ERROR is "the client NACKed the latest".
_STATUS_NAMES = {1: "SYNCED", 2: "NOT_SENT", 3: "STALE", 4: "NACKED"}
_NOT_SENT = 2
# A table cell shows this much of a NACK; --json carries the whole (server-truncated) text.
_NACK_CELL = 60


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "status",
        help="show the connected gateways and what each accepted or rejected",
        description="Ask the control plane (its CSDS, on the ADS port) for every connected "
        "gateway: its address and protocol, and per resource type the version sent, the "
        "version accepted and the last rejection.",
    )
    p.add_argument(
        "--xds-address",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"where knative-xds serves xDS (default: {DEFAULT_ADDRESS})",
    )
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default: 5)"
    )
    add_client_tls_flags(p)
    p.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the control plane's certificate must hold, when it is not the "
        "--xds-address host (through a port-forward: knative-xds.knative-xds.svc.cluster.local)",
    )
    return p


@dataclass(frozen=True, slots=True)
class TypeStatus:
    status: str
    sent: str
    acked: str
    last_nack: str
    last_nack_version: str
    last_updated: str


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    gateway: str
    cluster: str
    address: str
    protocol: str
    types: dict[str, TypeStatus]


def gateways(response: csds_pb2.ClientStatusResponse) -> list[GatewayStatus]:
    """The response as rows (pure)."""
    from ..server.csds import PEER_KEY, PROTOCOL_KEY, SENT_KEY

    out = []
    for config in response.config:
        meta = config.node.metadata.fields
        sent = meta[SENT_KEY].struct_value.fields if SENT_KEY in meta else {}
        types = {}
        for c in config.generic_xds_configs:
            types[TYPE_NAMES.get(c.type_url, c.type_url)] = TypeStatus(
                status=_STATUS_NAMES.get(c.config_status, "UNKNOWN"),
                sent=sent[c.type_url].string_value if c.type_url in sent else "",
                acked=c.version_info if c.config_status != _NOT_SENT else "",
                last_nack=c.error_state.details if c.HasField("error_state") else "",
                last_nack_version=c.error_state.version_info if c.HasField("error_state") else "",
                last_updated=_iso(c.last_updated) if c.HasField("last_updated") else "",
            )
        out.append(
            GatewayStatus(
                gateway=config.node.id,
                cluster=config.node.cluster,
                address=_address(meta[PEER_KEY].string_value if PEER_KEY in meta else ""),
                protocol=meta[PROTOCOL_KEY].string_value if PROTOCOL_KEY in meta else "?",
                types=types,
            )
        )
    return out


def table(rows: list[GatewayStatus]) -> str:
    """One line per gateway and type; a gateway's own columns only on its first line."""
    header = ("GATEWAY", "ADDRESS", "PROTOCOL", "TYPE", "STATUS", "SENT", "ACKED", "LAST NACK")
    lines: list[tuple[str, ...]] = [header]
    for g in rows:
        first = True
        for name, t in g.types.items():
            who = (g.gateway, g.address, g.protocol) if first else ("", "", "")
            first = False
            nack = _one_line(t.last_nack)
            if len(nack) > _NACK_CELL:
                nack = nack[: _NACK_CELL - 1] + "…"
            lines.append((*who, name, t.status, t.sent or "-", t.acked or "-", nack or "-"))
        if first:  # connected, nothing asked for yet
            lines.append((g.gateway, g.address, g.protocol, "-", "-", "-", "-", "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fetch(
    address: str, tls: TlsFiles | None, timeout: float, server_name: str | None = None
) -> csds_pb2.ClientStatusResponse:
    import grpc
    from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

    from ..server.tls import channel_credentials

    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, channel_credentials(tls), options=options)
    with channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        return stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=timeout)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import grpc

    from ..server.tls import TlsFileError

    out, err = out or sys.stdout, err or sys.stderr
    address = args.xds_address
    tls = client_tls(args)
    try:
        response = fetch(address, tls, args.timeout, args.tls_server_name)
    except TlsFileError as e:
        print(f"knative-xds status: {e}", file=err)
        return EXIT_UNREACHABLE
    except grpc.RpcError as e:
        code = e.code() if isinstance(e, grpc.Call) else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            # gRPC says a refused handshake the way it says a closed port.
            hint = (
                ""
                if tls is None
                else "; or it refused our TLS: check --tls-ca/--tls-cert/--tls-key"
            )
            print(
                f"no control plane answers at {address}: is `knative-xds serve` running? "
                f"(--xds-address to point elsewhere){hint}",
                file=err,
            )
        else:
            detail = e.details() if isinstance(e, grpc.Call) else str(e)
            print(
                f"the control plane at {address} refused the status query: "
                f"{code.name if code else 'error'}: {detail}",
                file=err,
            )
        return EXIT_UNREACHABLE
    rows = gateways(response)
    if args.json:
        print(
            json.dumps({"control_plane": address, "gateways": [asdict(g) for g in rows]}), file=out
        )
    elif not rows:
        print(f"no gateway is connected to {address}", file=out)
    else:
        print(table(rows), file=out)
    return 0


def _address(peer: str) -> str:
    """gRPC's `ipv4:10.0.0.1:5000` / `ipv6:[::1]:5000` as an address an operator types."""
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return peer.removeprefix(prefix)
    return peer


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _iso(stamp: Any) -> str:
    return datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9, UTC).isoformat(timespec="seconds")
