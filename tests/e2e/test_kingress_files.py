"""The KIngress path with no cluster: KIngresses and Services from files, the real Envoy."""

from __future__ import annotations

from knative_xds.admin.status_view import status
from knative_xds.model.kinds import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION


def kingress(name: str, host: str, service: str, ingress_class: str = DEFAULT_INGRESS_CLASS):
    split = {"serviceNamespace": "default", "serviceName": service, "servicePort": 80}
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {INGRESS_CLASS_ANNOTATION: ingress_class},
        },
        "spec": {
            "rules": [
                {
                    "hosts": [host],
                    "visibility": "ExternalIP",
                    "http": {"paths": [{"splits": [split]}]},
                }
            ]
        },
    }


def revision_service(revision: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": revision,
            "namespace": "default",
            "labels": {"serving.knative.dev/revision": revision},
        },
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }


async def test_a_kingress_from_a_file_is_served_and_its_readiness_shown(gateway):
    hello = await gateway.ready_revisions("hello-00001")
    other_class = kingress("theirs", "theirs.example.com", "hello-00001", "kourier.example")
    await gateway.start(
        [
            kingress("shop", "shop.example.com", "hello-00001"),
            other_class,
            revision_service("hello-00001"),
            *hello,
        ]
    )
    await gateway.wait_served("shop.example.com", "hello-00001")

    def ready_rows() -> list[dict]:
        rows = status(gateway.plane)["kingresses"]["kingresses"]
        return [r for r in rows if r["ready"]]

    await gateway.wait_until(ready_rows, what="the KIngress to show Ready")
    [row] = ready_rows()
    assert (row["key"], row["generation"]) == ("default/shop", 0)
    assert row["seconds_to_ready"] >= 0
    # Another class's KIngress is neither served nor listed.
    assert (await gateway.get("theirs.example.com")).status == 404
    assert [r["key"] for r in status(gateway.plane)["kingresses"]["kingresses"]] == ["default/shop"]
