"""What the Kubernetes source keeps of an object: exactly the fields `kinds.KEEP` lists, which
parse exactly as the whole object."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from knative_xds.model import ObjectKey, RawObject
from knative_xds.model import network as net
from knative_xds.model.kinds import (
    DEFAULT_INGRESS_CLASS,
    INGRESS_CLASS_ANNOTATION,
    NETWORKING,
    SERVING,
)
from knative_xds.model.kingress import parse_ingress, parse_secret, parse_service
from knative_xds.model.objects import (
    parse_configuration,
    parse_endpoint_slice,
    parse_revision,
    parse_route,
)
from knative_xds.sources.kube import trim
from tests.kube_fixtures import (
    a_config_map,
    a_revision,
    a_route,
    a_service,
    a_slice,
    an_activator_slice,
    an_ingress,
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


# -- the kinds a KIngress brings: kept exactly as kinds.KEEP says ---------------------

_PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
_KEY = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")


def _noisy(body: dict, annotations: dict[str, str]) -> dict:
    """`body` as the API server returns it: bookkeeping metadata and a status besides."""
    meta = {
        **body["metadata"],
        "uid": "8d5b…",
        "resourceVersion": "4711",
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "annotations": {
            **annotations,
            "kubectl.kubernetes.io/last-applied-configuration": "{…}" * 100,
            "serving.knative.dev/creator": "system:serviceaccount:knative-serving:controller",
        },
        "managedFields": [{"manager": "controller", "fieldsV1": {"f:spec": {}}}],
        "ownerReferences": [{"kind": "Route", "name": "hello"}],
    }
    return {**body, "metadata": meta}


def _secret() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hello-tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _PEM.decode(), "tls.key": _KEY.decode()},
        "immutable": False,
    }


_CLASS = {INGRESS_CLASS_ANNOTATION: DEFAULT_INGRESS_CLASS}


@pytest.mark.parametrize(
    ("whole", "kept"),
    [
        pytest.param(
            _noisy(an_ingress(generation=4), _CLASS),
            {
                "apiVersion": NETWORKING,
                "kind": "Ingress",
                "metadata": {
                    "name": "hello",
                    "namespace": "default",
                    "generation": 4,
                    "labels": {"serving.knative.dev/route": "hello"},
                    "annotations": _CLASS,
                },
                "spec": an_ingress()["spec"],
            },
            id="kingress",
        ),
        pytest.param(
            _noisy(a_service(), {}),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "hello-00001",
                    "namespace": "default",
                    "labels": {"serving.knative.dev/revision": "hello-00001"},
                },
                "spec": {"type": "ClusterIP", "ports": a_service()["spec"]["ports"]},
            },
            id="service",
        ),
        pytest.param(
            _noisy(
                {
                    **a_service("outside", revision=None),
                    "spec": {"type": "ExternalName", "externalName": "example.org", "ports": []},
                },
                {},
            ),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "outside", "namespace": "default", "labels": {}},
                "spec": {"type": "ExternalName", "externalName": "example.org", "ports": []},
            },
            id="service-external-name",
        ),
        pytest.param(
            _noisy({**_secret(), "data": {**_secret()["data"], "ca.crt": _PEM.decode()}}, {}),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hello-tls", "namespace": "default"},
                "type": "kubernetes.io/tls",
                "data": _secret()["data"],
            },
            id="tls-secret-keeps-only-its-certificate-and-key",
        ),
    ],
)
def test_trim_keeps_exactly_the_fields_kinds_keep_lists(whole: dict, kept: dict) -> None:
    assert trim(whole["kind"], whole) == kept


@pytest.mark.parametrize(
    ("body", "parse"),
    [
        (_noisy(an_ingress(), _CLASS), parse_ingress),
        (
            _noisy(an_ingress(ingress_class="other"), {INGRESS_CLASS_ANNOTATION: "other"}),
            parse_ingress,
        ),
        (_noisy(a_service(), {}), parse_service),
        (_noisy(_secret(), {}), parse_secret),
    ],
    ids=["kingress", "kingress-other-class", "service", "tls-secret"],
)
def test_trimmed_kingress_objects_parse_exactly_as_whole_ones(
    body: dict, parse: Callable[[RawObject], object]
) -> None:
    assert parse(_raw(trim(body["kind"], body))) == parse(_raw(body))
