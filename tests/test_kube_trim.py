"""What the Kubernetes source keeps of an object parses exactly as the whole object."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from knative_xds.model import ObjectKey, RawObject
from knative_xds.model import network as net
from knative_xds.model.objects import (
    parse_configuration,
    parse_endpoint_slice,
    parse_revision,
    parse_route,
)
from knative_xds.sources.kube import trim
from tests.kube_fixtures import (
    SERVING,
    a_config_map,
    a_revision,
    a_route,
    a_slice,
    an_activator_slice,
)


def _whole(body: dict) -> dict:
    noisy = {
        "uid": "8d5b…",
        "generation": 3,
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{…}" * 100,
            "autoscaling.knative.dev/target-burst-capacity": "-1",
        },
        "managedFields": [{"manager": "controller", "fieldsV1": {"f:spec": {}}}],
        "ownerReferences": [{"kind": "Configuration", "name": "hello"}],
    }
    return {**body, "metadata": {**body["metadata"], **noisy}}


def _labelled(body: dict, labels: dict[str, str]) -> dict:
    return {**body, "metadata": {**body["metadata"], "labels": labels}}


def _raw(body: dict) -> RawObject:
    meta = body["metadata"]
    return RawObject(
        body["kind"],
        body["apiVersion"],
        ObjectKey(meta["namespace"], meta["name"]),
        body,
        "kubernetes",
    )


@pytest.mark.parametrize(
    ("body", "parse"),
    [
        (a_route(), parse_route),
        (_labelled(a_route(), {"networking.knative.dev/visibility": "cluster-local"}), parse_route),
        (a_revision(), parse_revision),
        (a_revision(ready=False), parse_revision),
        (
            {
                **a_revision(),
                "spec": {
                    "containers": [{"ports": [{"name": "h2c", "containerPort": 8080}]}],
                    "timeoutSeconds": 30,
                },
            },
            parse_revision,
        ),
        (
            {
                "apiVersion": SERVING,
                "kind": "Configuration",
                "metadata": {"name": "c", "namespace": "default"},
                "spec": {"template": {}},
                "status": {"latestReadyRevisionName": "c-1", "observedGeneration": 2},
            },
            parse_configuration,
        ),
        (a_slice(), parse_endpoint_slice),
        (a_slice(ready=False), parse_endpoint_slice),
        (an_activator_slice(), parse_endpoint_slice),
        ({**a_route(), "spec": {"traffic": "not a list"}}, parse_route),
    ],
    ids=[
        "route",
        "route-cluster-local",
        "revision",
        "revision-not-ready",
        "revision-h2c",
        "configuration",
        "slice",
        "slice-not-ready",
        "activator",
        "bad-route",
    ],
)
def test_trimmed_objects_parse_exactly_as_whole_ones(
    body: dict, parse: Callable[[RawObject], object]
) -> None:
    whole = _whole(body)
    trimmed = trim(body["kind"], whole)
    assert "managedFields" not in trimmed["metadata"] and "uid" not in trimmed["metadata"]
    assert len(repr(trimmed)) < len(repr(whole)) / 2
    try:
        expected: object = parse(_raw(whole))
    except ValueError as e:
        expected = str(e)
    try:
        got: object = parse(_raw(trimmed))
    except ValueError as e:
        got = str(e)
    assert got == expected


def test_trimmed_config_maps_read_as_whole_ones() -> None:
    body = _whole(
        a_config_map(
            "config-network",
            {"domain-template": "{{.Name}}.{{.Domain}}", "tag-header-based-routing": "enabled"},
        )
    )
    base = net.NetworkConfig()
    assert net.parse_config_network(
        _raw(trim("ConfigMap", body)), base
    ) == net.parse_config_network(_raw(body), base)
