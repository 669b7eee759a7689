"""What a Knative user sees through the gateway Envoy that knative-xds configures.

Each test creates Knative Services the ordinary way and only ever talks HTTP
to the gateway; knative-xds reads the Routes, Revisions and EndpointSlices
that Knative makes of them. Knative's own Route status is not waited on:
nothing in this install reconciles its KIngress (see README.md).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from typing import Any

import pytest

from integration.cluster import Gateway, Kubectl, Response, eventually

# Building the cluster (kind, an image, Knative) comes first and takes minutes.
pytestmark = pytest.mark.timeout(1800)

IMAGE = "ghcr.io/knative/helloworld-go:latest"
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
    kubectl.apply(service)
    revision = service["spec"]["template"]["metadata"]["name"]
    kubectl.wait(
        f"revision/{revision}", condition="Ready", namespace=service["metadata"]["namespace"]
    )


def answer(gateway: Gateway, name: str, namespace: str, tag: str | None = None) -> str:
    """The body of the first 200 from a host, once knative-xds serves it."""

    def ok() -> str | None:
        response = gateway.get(host(name, namespace, tag))
        return response.body.strip() if response.status == 200 else None

    return eventually(ok, timeout=120, what=f"200 from {host(name, namespace, tag)}")


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
