"""Internal TLS through the real Envoy: config-xds `cluster-cert-secret` names a Secret in
knative-serving, and the cluster-local hosts answer over TLS with its certificate, fetched
over SDS on the ADS stream (SotW and Delta). A rotation re-sends the Secret alone and the
next handshake sees the new certificate; one Envoy rejects leaves the last serving; turning
the key off takes the listener away."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import trustme

from knative_xds import synth
from knative_xds.envoy import admin_get
from knative_xds.resources import ROUTE, SECRET, short
from knative_xds.server.callbacks import Callbacks, StreamStatus
from tests.kingress_fixtures import a_secret

from .gateway import Gateway

LOCAL = "hello.default.svc.cluster.local"
CERT_SECRET = "cluster-certs"
RDS = short(ROUTE)


class Pushes(Callbacks):
    """The type of every response the control plane sends, in order."""

    def __init__(self) -> None:
        self.types: list[str] = []

    def on_response(
        self, status: StreamStatus, type_url: str, version: str, count: int, size: int
    ) -> None:
        self.types.append(short(type_url))


def cluster_secret(ca: trustme.CA) -> tuple[dict, bytes]:
    """A TLS Secret in knative-serving for the cluster-local names; and its leaf (DER)."""
    leaf = ca.issue_cert(LOCAL, "*.default.svc.cluster.local")
    secret = a_secret(
        CERT_SECRET,
        ns="knative-serving",
        cert=b"".join(b.bytes() for b in leaf.cert_chain_pems),
        key=leaf.private_key_pem.bytes(),
    )
    return secret, ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def tls_get(port: int, ca: trustme.CA) -> tuple[str, bytes]:
    """GET / over a fresh TLS connection trusting `ca`: "<status> <revision>" (or the error),
    and the certificate the server showed (DER)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=LOCAL) as tls,
        ):
            shown = tls.getpeercert(binary_form=True) or b""
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {LOCAL}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError) as e:
        return f"failed: {type(e).__name__}", b""
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    revision = json.loads(body)["revision"] if status == "200" else ""
    return f"{status} {revision}".strip(), shown


def config_xds(**data: str) -> dict:
    return synth.config_map("config-xds", {k.replace("_", "-"): v for k, v in data.items()})


async def test_cluster_local_tls_serves_the_secret_rotates_by_sds_alone_outlives_a_bad_one_and_turns_off(
    gateway: Gateway,
) -> None:
    ca = trustme.CA()
    secret, first = cluster_secret(ca)
    gateway.write([secret], "cluster-cert.yaml")
    gateway.write([config_xds(cluster_cert_secret=CERT_SECRET)], "config-xds.yaml")
    revisions = await gateway.ready_revisions("hello-1")
    route = synth.route("hello", [synth.target("hello-1", 100)])
    await gateway.start([*revisions, route])
    assert gateway.plane is not None
    pid, port = gateway.envoy_pid, gateway.internal_tls

    async def shown(cert: bytes) -> bool:
        answer, der = await asyncio.to_thread(tls_get, port, ca)
        return answer == "200 hello-1" and der == cert

    await gateway.wait_until(lambda: shown(first), what="internal-tls with the Secret's cert")

    # Rotation: a new certificate in the same Secret.
    pushes = Pushes()
    gateway.plane.ads.observe(pushes)
    secret, second = cluster_secret(ca)
    gateway.write([secret], "cluster-cert.yaml")
    await gateway.wait_until(lambda: shown(second), what="the new certificate on a new handshake")
    # Then a change that re-sends route tables only (a new request timeout): everything
    # sent before its first table is the Secret, no listener, scope or table.
    gateway.write([synth.revision("hello-1", timeout=123), *revisions[1:], route])
    await gateway.wait_until(lambda: RDS in pushes.types, what="the marker's route tables")
    before_marker = pushes.types[: pushes.types.index(RDS)]
    assert before_marker and set(before_marker) == {short(SECRET)}, pushes.types
    assert (await gateway.get(LOCAL, internal=True)).revision == "hello-1"

    # PEM that BoringSSL cannot load passes the model's checks (armour, base64): Envoy
    # rejects the Secret, and the certificate it holds keeps serving.
    gateway.write([a_secret(CERT_SECRET, ns="knative-serving")], "cluster-cert.yaml")
    await gateway.wait_until(
        lambda: any(t == SECRET for _, t in gateway.plane.ads.nacks), what="Envoy's NACK"
    )
    assert await shown(second)

    # Off: the listener goes, the plain cluster-local one keeps serving.
    gateway.write([config_xds()], "config-xds.yaml")

    async def gone() -> bool:
        listeners = await asyncio.to_thread(admin_get, gateway.admin, "/listeners")
        return "internal-tls" not in listeners

    await gateway.wait_until(gone, what="internal-tls to be removed")
    answer, _ = await asyncio.to_thread(tls_get, port, ca)
    assert answer.startswith("failed"), answer
    assert (await gateway.get(LOCAL, internal=True)).revision == "hello-1"
    assert gateway.envoy_pid == pid, "Envoy was not restarted"


async def test_a_missing_secret_holds_nothing_back_and_its_arrival_brings_the_listener(
    sotw_gateway: Gateway,
) -> None:
    # A listener naming a secret the control plane does not have would keep a starting
    # Envoy from serving anything until its initial fetch timeout (15 s): it is not sent.
    gateway = sotw_gateway
    ca = trustme.CA()
    gateway.write([config_xds(cluster_cert_secret=CERT_SECRET)], "config-xds.yaml")
    revisions = await gateway.ready_revisions("hello-1")
    await gateway.start([*revisions, synth.route("hello", [synth.target("hello-1", 100)])])
    assert gateway.plane is not None

    assert (await gateway.get(LOCAL, internal=True)).revision == "hello-1"
    assert "internal-tls" not in await asyncio.to_thread(admin_get, gateway.admin, "/listeners")
    [problem] = gateway.plane.problems()
    assert (problem.key, problem.field) == (
        "knative-serving/config-xds",
        "data.cluster-cert-secret",
    )
    assert f"Secret knative-serving/{CERT_SECRET}" in problem.message

    secret, cert = cluster_secret(ca)
    gateway.write([secret], "cluster-cert.yaml")

    async def served() -> bool:
        return await asyncio.to_thread(tls_get, gateway.internal_tls, ca) == ("200 hello-1", cert)

    await gateway.wait_until(served, what="internal-tls once its Secret exists")
    assert gateway.plane.problems() == []
