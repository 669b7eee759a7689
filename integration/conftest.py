"""A kind cluster (or the one in KUBECONFIG) with Knative Serving, knative-xds and its gateway.

Knative is installed with knative-xds as its networking layer: through a
kustomization of its release that takes the Component deploy/knative (the
ingress class in config-network), as README.md describes for users.

Session fixtures build it once; every test then talks to the gateway through
`kubectl port-forward`. Without docker (with a running engine), kind and
kubectl, every test is skipped with the reason. See README.md for the knobs.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.cluster import (
    GATEWAY_NAMESPACE,
    REPO,
    CommandFailed,
    Gateway,
    Kubectl,
    missing_tools,
    run,
)
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS

KIND_NAME = os.environ.get("KNATIVE_XDS_KIND_NAME", "knative-xds-it")
KNATIVE_VERSION = os.environ.get("KNATIVE_VERSION", "v1.20.0")
KNATIVE_RELEASE = f"https://github.com/knative/serving/releases/download/knative-{KNATIVE_VERSION}"
LOCAL_IMAGE = "knative-xds:it"
TEST_NAMESPACE = "knative-xds-it"


@pytest.fixture(scope="session")
def kubectl() -> Iterator[Kubectl]:
    if os.environ.get("KNATIVE_XDS_CLUSTER") == "existing":
        yield from _existing_cluster()
    else:
        yield from _kind_cluster()


def _existing_cluster() -> Iterator[Kubectl]:
    if os.environ.get("KNATIVE_XDS_IMAGE") is None:
        pytest.skip(
            "KNATIVE_XDS_CLUSTER=existing needs KNATIVE_XDS_IMAGE, an image the cluster can pull"
        )
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    kubectl = Kubectl(kubeconfig)
    try:
        kubectl("cluster-info", timeout=30)
    except (CommandFailed, FileNotFoundError) as e:
        pytest.skip(f"no reachable cluster in {kubeconfig}: {e}")
    yield kubectl


def _kind_cluster() -> Iterator[Kubectl]:
    why = missing_tools()
    if why is not None:
        pytest.skip(f"kind cluster tests need docker, kind and kubectl: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = str(Path(tmp) / "kubeconfig")
        created = KIND_NAME not in run(["kind", "get", "clusters"]).split()
        if created:
            run(
                [
                    "kind",
                    "create",
                    "cluster",
                    "--name",
                    KIND_NAME,
                    "--kubeconfig",
                    kubeconfig,
                    "--wait",
                    "180s",
                ]
            )
        else:
            Path(kubeconfig).write_text(run(["kind", "get", "kubeconfig", "--name", KIND_NAME]))
        if "KNATIVE_XDS_IMAGE" not in os.environ:
            run(["docker", "build", "-t", LOCAL_IMAGE, str(REPO)], timeout=1200)
            run(["kind", "load", "docker-image", LOCAL_IMAGE, "--name", KIND_NAME])
        try:
            yield Kubectl(kubeconfig)
        finally:
            if created and os.environ.get("KNATIVE_XDS_KEEP_CLUSTER") != "1":
                run(["kind", "delete", "cluster", "--name", KIND_NAME])


@pytest.fixture(scope="session")
def knative(kubectl: Kubectl) -> Kubectl:
    """Knative Serving (CRDs and core) handing its KIngresses to knative-xds, with
    settings that make scale-to-zero quick."""
    kubectl("apply", "-f", f"{KNATIVE_RELEASE}/serving-crds.yaml")
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")
    with tempfile.TemporaryDirectory() as tmp:
        kubectl("apply", "-k", _knative_core_with_our_class(Path(tmp)))
    kubectl.wait("deployment", "--all", condition="Available", namespace="knative-serving")
    network = kubectl.get("configmap", "config-network", "knative-serving")["data"]
    # Set, and nothing of Knative's own lost (its `_example` documents every key).
    assert network.get("ingress-class") == DEFAULT_INGRESS_CLASS, network
    assert "_example" in network, f"deploy/knative wiped config-network: {sorted(network)}"
    patches = {
        "config-domain": '{"data": {"example.com": ""}}',
        "config-autoscaler": '{"data": {"stable-window": "6s", "scale-to-zero-grace-period": "10s"}}',
    }
    for name, patch in patches.items():
        kubectl("patch", "configmap", name, "-n", "knative-serving", "--type", "merge", "-p", patch)
    return kubectl


def _knative_core_with_our_class(folder: Path) -> str:
    """A kustomization in `folder`: Knative's serving-core.yaml with deploy/knative."""
    with urllib.request.urlopen(f"{KNATIVE_RELEASE}/serving-core.yaml", timeout=120) as r:
        (folder / "serving-core.yaml").write_bytes(r.read())
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["serving-core.yaml"],
        "components": [os.path.relpath(REPO / "deploy" / "knative", folder)],
    }
    (folder / "kustomization.yaml").write_text(json.dumps(kustomization))
    return str(folder)


@pytest.fixture(scope="session")
def deployed(knative: Kubectl) -> Kubectl:
    """deploy/ as `kubectl apply -k` installs it, running the image under test."""
    image = os.environ.get("KNATIVE_XDS_IMAGE", LOCAL_IMAGE)
    knative("apply", "-k", str(REPO / "deploy"))
    knative(
        "set", "image", "-n", GATEWAY_NAMESPACE, "deployment/knative-xds", f"knative-xds={image}"
    )
    # Ready means: every initial list done and the first snapshot published (control
    # plane); listeners served (gateway).
    for deployment in ("knative-xds", "knative-xds-gateway"):
        knative(
            "rollout",
            "status",
            "-n",
            GATEWAY_NAMESPACE,
            f"deployment/{deployment}",
            "--timeout=300s",
        )
    return knative


@pytest.fixture(scope="session")
def gateway(deployed: Kubectl) -> Iterator[Gateway]:
    gw = Gateway(deployed, namespace=GATEWAY_NAMESPACE, service="knative-xds-gateway")
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="session")
def namespace(deployed: Kubectl) -> Iterator[str]:
    deployed.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEST_NAMESPACE}})
    try:
        yield TEST_NAMESPACE
    finally:
        deployed("delete", "namespace", TEST_NAMESPACE, "--wait=false")
