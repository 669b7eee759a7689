"""A kind cluster (or the one in KUBECONFIG) with Knative Serving, knative-xds and its gateway.

Session fixtures build it once; every test then talks to the gateway through
`kubectl port-forward`. Without docker (with a running engine), kind and
kubectl, every test is skipped with the reason. See README.md for the knobs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.cluster import REPO, CommandFailed, Gateway, Kubectl, missing_tools, run

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
    """Knative Serving (CRDs and core) with settings that make scale-to-zero quick."""
    kubectl("apply", "-f", f"{KNATIVE_RELEASE}/serving-crds.yaml")
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")
    kubectl("apply", "-f", f"{KNATIVE_RELEASE}/serving-core.yaml")
    kubectl.wait("deployment", "--all", condition="Available", namespace="knative-serving")
    patches = {
        "config-domain": '{"data": {"example.com": ""}}',
        "config-autoscaler": '{"data": {"stable-window": "6s", "scale-to-zero-grace-period": "10s"}}',
    }
    for name, patch in patches.items():
        kubectl("patch", "configmap", name, "-n", "knative-serving", "--type", "merge", "-p", patch)
    return kubectl


@pytest.fixture(scope="session")
def deployed(knative: Kubectl) -> Kubectl:
    """deploy/ as `kubectl apply -k` installs it, running the image under test."""
    image = os.environ.get("KNATIVE_XDS_IMAGE", LOCAL_IMAGE)
    knative("apply", "-k", str(REPO / "deploy"))
    knative("set", "image", "-n", "knative-xds", "deployment/knative-xds", f"knative-xds={image}")
    # Ready means: every initial list done and the first snapshot published (control
    # plane); listeners served (gateway).
    for deployment in ("knative-xds", "knative-xds-gateway"):
        knative(
            "rollout", "status", "-n", "knative-xds", f"deployment/{deployment}", "--timeout=300s"
        )
    return knative


@pytest.fixture(scope="session")
def gateway(deployed: Kubectl) -> Iterator[Gateway]:
    gw = Gateway(deployed, namespace="knative-xds", service="knative-xds-gateway")
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
