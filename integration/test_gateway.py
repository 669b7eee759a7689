"""What a Knative user sees with knative-xds as Knative's networking layer.

Each test creates Knative objects the ordinary way and waits for them as a
user does (`kubectl wait ksvc/NAME --for=condition=Ready`): Knative's Route is
Ready only once its KIngress is, and only knative-xds writes the status of a
KIngress of its class, once every gateway serves it. Then the test talks HTTP
to the gateway (through `kubectl port-forward`), or, for cluster-local names,
from a pod in the cluster.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from typing import Any

import pytest

from integration.cluster import (
    PRIVATE_GATEWAY,
    PUBLIC_GATEWAY,
    Gateway,
    Kubectl,
    Response,
    eventually,
)
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION

# Building the cluster (kind, an image, Knative) comes first and takes minutes.
pytestmark = pytest.mark.timeout(1800)

IMAGE = "ghcr.io/knative/helloworld-go:latest"
CURL = "curlimages/curl:latest"
KINGRESS = "ingresses.networking.internal.knative.dev"
KEEP_ONE_POD = {"autoscaling.knative.dev/min-scale": "1"}


def a_service(
    name: str,
    namespace: str,
    *,
    revision: str,
    annotations: dict[str, str] | None = None,
    traffic: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Knative Service whose revision `<name>-<revision>` answers "Hello <revision>!"."""
    template = {
        "metadata": {"name": f"{name}-{revision}", "annotations": annotations or KEEP_ONE_POD},
        "spec": {"containers": [{"image": IMAGE, "env": [{"name": "TARGET", "value": revision}]}]},
    }
    spec: dict[str, Any] = {"template": template}
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def host(name: str, namespace: str, tag: str | None = None) -> str:
    return f"{tag}-{name}.{namespace}.example.com" if tag else f"{name}.{namespace}.example.com"


def roll_out(kubectl: Kubectl, service: dict[str, Any]) -> None:
    """Apply a Knative Service and wait until it is Ready: its latest revision ready and
    its Route's KIngress (ours) Ready, which knative-xds says once every gateway serves it."""
    kubectl.apply(service)
    kubectl.wait_ready("ksvc", service["metadata"]["name"], service["metadata"]["namespace"])


def answer(gateway: Gateway, name: str, namespace: str, tag: str | None = None) -> str:
    """The body of the first 200 from a Route's host, once knative-xds serves it."""
    return first_200(gateway, host(name, namespace, tag), timeout=120)


def first_200(gateway: Gateway, hostname: str, *, timeout: float) -> str:
    def ok() -> str | None:
        response = gateway.get(hostname)
        return response.body.strip() if response.status == 200 else None

    return eventually(ok, timeout=timeout, what=f"200 from {hostname}")


@pytest.fixture(scope="module")
def split(deployed: Kubectl, gateway: Gateway, namespace: str) -> str:
    """Service `split`: revisions one (70 %) and two (30 %), tagged with their names."""
    roll_out(deployed, a_service("split", namespace, revision="one"))
    traffic = [
        {"revisionName": "split-one", "percent": 70, "tag": "one"},
        {"revisionName": "split-two", "percent": 30, "tag": "two"},
    ]
    roll_out(deployed, a_service("split", namespace, revision="two", traffic=traffic))
    answer(gateway, "split", namespace, tag="two")  # the split is served from here on
    return "split"


def test_a_route_answers_through_the_gateway(gateway: Gateway, split: str, namespace: str) -> None:
    assert answer(gateway, split, namespace) in {"Hello one!", "Hello two!"}


def test_a_service_answers_on_the_first_request_once_it_is_ready(
    deployed: Kubectl, gateway: Gateway, namespace: str
) -> None:
    roll_out(deployed, a_service("ready", namespace, revision="first"))
    # No retry: Ready is knative-xds's word that every gateway already serves the route.
    response = gateway.get(host("ready", namespace))
    assert (response.status, response.body.strip()) == (200, "Hello first!")
    kingress = deployed.get(KINGRESS, "ready", namespace)
    assert kingress["metadata"]["annotations"][INGRESS_CLASS_ANNOTATION] == DEFAULT_INGRESS_CLASS
    status = kingress["status"]
    assert status["observedGeneration"] == kingress["metadata"]["generation"]
    assert status["publicLoadBalancer"]["ingress"][0]["domainInternal"] == PUBLIC_GATEWAY
    assert status["privateLoadBalancer"]["ingress"][0]["domainInternal"] == PRIVATE_GATEWAY


def test_a_cluster_local_call_reaches_the_service_through_knatives_placeholder(
    deployed: Kubectl, split: str, namespace: str
) -> None:
    # Knative points the Route's cluster-local name, an ExternalName Service, at the
    # private load balancer our status names: the cluster-local gateway.
    def placeholder() -> bool:
        spec = deployed.get("service", split, namespace)["spec"]
        return (spec["type"], spec.get("externalName")) == ("ExternalName", PRIVATE_GATEWAY)

    eventually(placeholder, timeout=30, what=f"Service {split} pointing at {PRIVATE_GATEWAY}")
    url = f"http://{split}.{namespace}.svc.cluster.local/"
    # Retries cover only the new pod's first DNS lookups: the Service is Ready already.
    curl = ["curl", "-sS", "--fail", "--max-time", "10",
            "--retry", "10", "--retry-delay", "2", "--retry-all-errors", url]  # fmt: skip
    body = deployed.run_pod("curl-cluster-local", namespace, image=CURL, command=curl)
    assert body.strip() in {"Hello one!", "Hello two!"}


def test_a_domain_mapping_answers_at_its_host(
    deployed: Kubectl, gateway: Gateway, namespace: str
) -> None:
    roll_out(deployed, a_service("mapped", namespace, revision="target"))
    domain = "app.example.org"
    # Knative maps a domain only for the namespace that claims it (config-network's
    # autocreate-cluster-domain-claims is off by default).
    claim = {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "ClusterDomainClaim",
        "metadata": {"name": domain},
        "spec": {"namespace": namespace},
    }
    mapping = {
        "apiVersion": "serving.knative.dev/v1beta1",
        "kind": "DomainMapping",
        "metadata": {"name": domain, "namespace": namespace},
        "spec": {
            "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "mapped"}
        },
    }
    deployed.apply(claim)
    deployed.apply(mapping)
    try:
        # Its KIngress sends the domain to the cluster-local gateway, through an
        # ExternalName Service, with the host rewritten to mapped.<ns>.svc.cluster.local.
        deployed.wait_ready("domainmapping", domain, namespace)
        # A retry only for Envoy's first DNS lookup of that ExternalName's target.
        assert first_200(gateway, domain, timeout=60) == "Hello target!"
    finally:
        deployed("delete", "domainmapping", domain, "-n", namespace, "--ignore-not-found")
        deployed("delete", "clusterdomainclaim", domain, "--ignore-not-found")


def test_traffic_is_split_by_percent(gateway: Gateway, split: str, namespace: str) -> None:
    answers = Counter(gateway.get(host(split, namespace)).body.strip() for _ in range(400))
    assert sum(answers.values()) == answers["Hello one!"] + answers["Hello two!"], answers
    # 30 % of 400 is 120, give or take 9 (one standard deviation); allow 4 of them.
    assert 80 <= answers["Hello two!"] <= 160, answers


def test_a_tag_has_a_host_of_its_own(gateway: Gateway, split: str, namespace: str) -> None:
    for tag in ("one", "two"):
        bodies = {gateway.get(host(split, namespace, tag)).body.strip() for _ in range(20)}
        assert bodies == {f"Hello {tag}!"}


def test_a_revision_scaled_to_zero_answers_through_the_activator(
    deployed: Kubectl, gateway: Gateway, namespace: str
) -> None:
    at_zero = {"autoscaling.knative.dev/min-scale": "0", "autoscaling.knative.dev/window": "6s"}
    roll_out(deployed, a_service("sleepy", namespace, revision="zero", annotations=at_zero))
    answer(gateway, "sleepy", namespace)
    eventually(
        lambda: not deployed.pods(namespace, "serving.knative.dev/revision=sleepy-zero"),
        timeout=300,
        every=2,
        what="sleepy-zero scaled to zero",
    )
    # No pod: knative-xds now routes this revision to the activator, which wakes one.
    response = gateway.get(host("sleepy", namespace), timeout=120)
    assert (response.status, response.body.strip()) == (200, "Hello zero!")


def test_a_route_edit_shifts_traffic_with_no_failed_request(
    deployed: Kubectl, gateway: Gateway, namespace: str
) -> None:
    roll_out(deployed, a_service("shift", namespace, revision="blue"))
    green = [
        {"revisionName": "shift-blue", "percent": 100},
        {"revisionName": "shift-green", "percent": 0, "tag": "green"},
    ]
    roll_out(deployed, a_service("shift", namespace, revision="green", traffic=green))
    answer(gateway, "shift", namespace, tag="green")

    seen: list[Response | Exception] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                seen.append(gateway.get(host("shift", namespace), timeout=10))
            except (OSError, http.client.HTTPException) as e:
                seen.append(e)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        eventually(lambda: len(seen) >= 20, timeout=60, every=0.1, what="requests before the edit")
        flipped = [{**green[0], "percent": 0}, {**green[1], "percent": 100}]
        deployed("patch", "ksvc", "shift", "-n", namespace, "--type", "merge",
                 "-p", json.dumps({"spec": {"traffic": flipped}}))  # fmt: skip
        eventually(lambda: _all_green(seen[-20:]), timeout=60, every=0.2, what="traffic on green")
    finally:
        stop.set()
        loader.join(timeout=30)

    failed = [r for r in seen if not isinstance(r, Response) or r.status != 200]
    assert failed == [], f"{len(failed)} of {len(seen)} requests failed during the edit"
    route = deployed.get("route", "shift", namespace)
    assert [t["percent"] for t in route["spec"]["traffic"]] == [0, 100], (
        "the Route carried the edit"
    )


def _all_green(last: list[Response | Exception]) -> bool:
    return len(last) == 20 and all(
        isinstance(r, Response) and r.body.strip() == "Hello green!" for r in last
    )
