"""ADS over mTLS: a gateway with a certificate the control plane trusts gets its config;
a client with no certificate, or one from another CA, is refused before any resource."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from knative_xds import synth as s
from knative_xds.app import ControlPlane, Settings
from knative_xds.cli import main
from knative_xds.envoy import bootstrap_yaml, start_envoy, wait_ready
from knative_xds.resources import CLUSTER
from knative_xds.server.tls import TlsFiles
from knative_xds.sources.file import FileSource
from knative_xds.translate import GatewayConfig

from ..protocol.xds_client import SotwClient
from .gateway import Gateway, free_port

HELLO = "hello.default.example.com"


@dataclass(frozen=True)
class Pki:
    server: TlsFiles  # the control plane's certificate, and the CA its clients need
    client: TlsFiles  # a gateway's certificate from that CA, and the CA to verify the server
    stranger: TlsFiles  # a certificate from another CA


def issue(ca: trustme.CA, directory: Path, name: str, *identities: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*identities)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    ca_file, other_file = tmp_path / "ca.crt", tmp_path / "other-ca.crt"
    ca.cert_pem.write_to_path(ca_file)
    other.cert_pem.write_to_path(other_file)
    server_cert, server_key = issue(ca, tmp_path, "server", "127.0.0.1", "localhost")
    client_cert, client_key = issue(ca, tmp_path, "gateway", "knative-gateway")
    stranger_cert, stranger_key = issue(other, tmp_path, "stranger", "knative-gateway")
    return Pki(
        server=TlsFiles(cert=server_cert, key=server_key, ca=ca_file),
        client=TlsFiles(cert=client_cert, key=client_key, ca=ca_file),
        stranger=TlsFiles(cert=stranger_cert, key=stranger_key, ca=ca_file),
    )


class TlsGateway(Gateway):
    """The e2e gateway, with ADS served over mTLS and Envoy's bootstrap holding its cert."""

    pki: Pki | None = None
    xds_port: int = 0

    async def start(self, objects) -> None:  # type: ignore[override]
        assert self.pki is not None
        self.write(objects)
        self.external, self.internal, self.admin = free_port(), free_port(), free_port()
        self.plane = ControlPlane(
            Settings(gateway=GatewayConfig("127.0.0.1", self.external, self.internal))
        )
        loaded = asyncio.Event()
        self._follow = asyncio.create_task(self.plane.run(FileSource(self.config_dir), loaded))
        await self.wait_until(lambda: loaded.is_set(), what="the first state", timeout=60)
        self.xds_port = await self.plane.start_xds("127.0.0.1:0", self.pki.server)
        boot = self.workdir / "envoy.yaml"
        boot.write_text(
            bootstrap_yaml(
                xds_host="127.0.0.1",
                xds_port=self.xds_port,
                admin_port=self.admin,
                tls=self.pki.client,
            )
        )
        self._envoy = await start_envoy(boot, log_path=self.workdir / "envoy.log")
        await wait_ready(self.admin, self._envoy)
        await self.wait_until(self._listening, what="Envoy's listeners to accept")


@pytest.fixture
async def tls_gateway(tmp_path: Path, pki: Pki) -> AsyncIterator[TlsGateway]:
    gw = TlsGateway(tmp_path)
    gw.pki = pki
    yield gw
    await gw.close()


async def started(gw: TlsGateway) -> None:
    objects = await gw.ready_revisions("hello-1")
    await gw.start([*objects, s.route("hello", [s.target("hello-1", 100)])])


async def test_envoy_gets_its_config_over_mtls_and_serves_the_route(tls_gateway: TlsGateway):
    await started(tls_gateway)
    await tls_gateway.wait_served(HELLO, "hello-1")
    [stream] = tls_gateway.plane.ads.streams.values()  # type: ignore[union-attr]
    assert stream.status.node_id == "knative-gateway"


def channel(port: int, files: TlsFiles) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes() if files.ca else None,
        private_key=files.key.read_bytes() if files.key else None,
        certificate_chain=files.cert.read_bytes() if files.cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def first_response_or_status(port: int, files: TlsFiles) -> object:
    """What a raw ADS client holding `files` gets for a CDS request: a response or a status."""
    ch = channel(port, files)
    client = SotwClient(ch, "intruder")
    try:
        await client.request(CLUSTER)
        return await client.recv(CLUSTER)
    except grpc.aio.AioRpcError as e:  # the write, or the reader, found the call ended
        return e.code()
    finally:
        await client.close()
        await ch.close()


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
async def test_a_client_without_a_trusted_certificate_is_refused_and_gets_nothing(
    tls_gateway: TlsGateway, pki: Pki, who: str
) -> None:
    await started(tls_gateway)
    await tls_gateway.wait_served(HELLO, "hello-1")
    files = TlsFiles(ca=pki.client.ca) if who == "no certificate" else pki.stranger

    outcome = await first_response_or_status(tls_gateway.xds_port, files)

    # The stream ended with the handshake refused: no response came, none can come.
    assert outcome == grpc.StatusCode.UNAVAILABLE, outcome
    assert [st.status.node_id for st in tls_gateway.plane.ads.streams.values()] == [
        "knative-gateway"
    ]  # only Envoy's stream was ever let in

    # The same request with the gateway's certificate is answered: the refusal was the cert.
    trusted = await first_response_or_status(tls_gateway.xds_port, pki.client)
    assert getattr(trusted, "type_url", None) == CLUSTER
    assert [r.type_url for r in trusted.resources]  # type: ignore[attr-defined]


async def test_status_asks_over_mtls_with_the_gateways_certificate(
    tls_gateway: TlsGateway, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    await started(tls_gateway)
    await tls_gateway.wait_served(HELLO, "hello-1")
    address = ["status", "--xds-address", f"127.0.0.1:{tls_gateway.xds_port}", "--json"]
    ca = ["--tls-ca", str(pki.client.ca)]
    cert = ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]

    assert await asyncio.to_thread(main, [*address, *ca, *cert]) == 0
    [gateway] = json.loads(capsys.readouterr().out)["gateways"]
    assert gateway["gateway"] == "knative-gateway"
    assert gateway["types"]["routes"]["status"] == "SYNCED"

    assert await asyncio.to_thread(main, [*address, *ca]) == 2  # no client certificate
    assert "refused our TLS" in capsys.readouterr().err
