"""The same Route edit applied by Envoy from a watched file, with no control plane.

The resources are the control plane's own (its translator, in process, on the
same Routes); only the delivery differs. Envoy's file-based RDS takes exactly one
route table per subscription, and every scope of an HCM shares one RDS source, so
the scopes (SRDS) are read from one watched file with each Route's table inline.
Listeners and clusters are static (the clusters with their endpoints inline):
edits never change them. An edit rewrites the scopes file and moves it into the
watched folder, which is how Envoy picks a file up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format

from knative_xds.app import ControlPlane, Settings
from knative_xds.envoy import bootstrap, require_envoy
from knative_xds.model import RawObject
from knative_xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE
from knative_xds.translate import GatewayConfig

from .common import free_port, route_name, route_objects, stop_all, wait_served

SCOPES_FILE = "srds.json"


def load(routes: int, gateway: GatewayConfig, ports: tuple[int, int]) -> ControlPlane:
    plane = ControlPlane(Settings(gateway=gateway, hold_empty_start=False))
    objects = [
        o
        for i in range(routes)
        for o in route_objects(i, blue=ports[0], green=ports[1], to_green=False)
    ]
    apply(plane, objects)
    return plane


def apply(plane: ControlPlane, objects: list[dict]) -> None:
    raws = [RawObject.from_dict(o, "bench") for o in objects]
    plane.pipeline.apply({r.ident: r for r in raws})


def _messages(plane: ControlPlane, type_url: str, cls):
    items = plane.cache.current().resources.get(type_url, {})
    response = discovery_pb2.DiscoveryResponse.FromString(
        b"".join(r.sotw_entry for r in items.values())
    )
    out = {}
    for packed in response.resources:
        message = cls()
        packed.Unpack(message)
        out[message.name if hasattr(message, "name") and message.name else message.cluster_name] = (
            message
        )
    return out


def _path_source(path: Path) -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        resource_api_version=config_source_pb2.V3,
        path_config_source=config_source_pb2.PathConfigSource(
            path=str(path), watched_directory={"path": str(path.parent)}
        ),
    )


def bootstrap_json(plane: ControlPlane, watched: Path, admin: int) -> str:
    config = bootstrap(xds_host="127.0.0.1", xds_port=9, admin_port=admin)
    del config["dynamic_resources"]
    listeners = []
    for listener in _messages(plane, LISTENER, listener_pb2.Listener).values():
        keep = False
        for chain in listener.filter_chains:
            for f in chain.filters:
                manager = hcm.HttpConnectionManager()
                if f.typed_config.Unpack(manager) and manager.HasField("scoped_routes"):
                    scoped = manager.scoped_routes
                    scoped.scoped_rds.scoped_rds_config_source.CopyFrom(
                        _path_source(watched / SCOPES_FILE)
                    )
                    # Required, never used: every scope carries its table inline.
                    scoped.rds_config_source.CopyFrom(_path_source(watched / "unused-rds.json"))
                    f.typed_config.Pack(manager)
                    keep = True
        if keep:
            listeners.append(json_format.MessageToDict(listener, preserving_proto_field_name=True))
    endpoints = _messages(plane, ENDPOINT, endpoint_pb2.ClusterLoadAssignment)
    clusters = []
    for cluster in _messages(plane, CLUSTER, cluster_pb2.Cluster).values():
        if cluster.type == cluster_pb2.Cluster.EDS:
            name = cluster.eds_cluster_config.service_name or cluster.name
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
            if name in endpoints:
                cluster.load_assignment.CopyFrom(endpoints[name])
                cluster.load_assignment.cluster_name = cluster.name
        clusters.append(json_format.MessageToDict(cluster, preserving_proto_field_name=True))
    config["static_resources"] = {"listeners": listeners, "clusters": clusters}
    return json.dumps(config)


def scopes_json(plane: ControlPlane, version: int) -> str:
    """A DiscoveryResponse of every scope, each with its route table inline."""
    tables = _messages(plane, ROUTE, route_pb2.RouteConfiguration)
    resources = []
    for scope in _messages(plane, SCOPED_ROUTE, scoped_route_pb2.ScopedRouteConfiguration).values():
        scope.route_configuration.CopyFrom(tables[scope.route_configuration_name])
        scope.ClearField("route_configuration_name")
        packed = any_pb2.Any()
        packed.Pack(scope)
        resources.append(json_format.MessageToDict(packed, preserving_proto_field_name=True))
    return json.dumps({"version_info": str(version), "resources": resources})


def write_into(watched: Path, text: str) -> None:
    """Write beside the watched folder, then move in: Envoy reacts to the move alone."""
    tmp = watched.parent / f".{SCOPES_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, watched / SCOPES_FILE)


def run(routes: int, edits: int, rng, workdir: Path) -> list[float]:
    """Time `edits` one-Route edits, write → first request served with the new split (ms)."""
    ports = (free_port(), free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "knative_xds.local.echo", "--name", color, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for color, port in zip(("blue", "green"), ports, strict=True)
    ]
    try:
        gateway = GatewayConfig(
            listen_address="127.0.0.1",
            external_port=free_port(),
            internal_port=free_port(),
            external_tls_port=free_port(),
            internal_tls_port=free_port(),
        )
        plane = load(routes, gateway, ports)
        watched = workdir / "watched"
        watched.mkdir()
        version = 1
        write_into(watched, scopes_json(plane, version))
        admin = free_port()
        boot = workdir / "envoy.json"
        boot.write_text(bootstrap_json(plane, watched, admin))
        with open(workdir / "envoy.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [str(require_envoy()), "-c", str(boot), "--log-level", "warn",
                     "--disable-hot-restart", "--concurrency", "2"],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        host = lambda i: f"{route_name(i)}.default.example.com"  # noqa: E731
        wait_served(gateway.external_port, host(routes - 1), "blue", timeout=600)
        on_green: set[int] = set()
        times: list[float] = []
        for _ in range(edits):
            i = rng.randrange(routes)
            to_green = i not in on_green
            apply(plane, route_objects(i, blue=ports[0], green=ports[1], to_green=to_green)[:1])
            version += 1
            text = scopes_json(plane, version)
            t0 = time.perf_counter()
            write_into(watched, text)
            t1 = wait_served(gateway.external_port, host(i), "green" if to_green else "blue", 30)
            times.append((t1 - t0) * 1000)
            on_green ^= {i}
            time.sleep(0.02)  # as convergence: edits are timed one at a time
        return times
    finally:
        stop_all(procs)
