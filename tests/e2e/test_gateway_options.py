"""ConfigMap `config-xds` through the real Envoy: access logs, the PROXY protocol and the TLS
policy, each switched on (or changed) while Envoy and the control plane keep running."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import trustme
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from knative_xds import synth
from knative_xds.envoy import bootstrap, require_envoy
from knative_xds.model import GatewayOptions
from knative_xds.model.gateway_options import FORMAT_COMMANDS
from knative_xds.translate import Listener
from knative_xds.translate.listeners import listener_resource
from tests.kingress_fixtures import a_kingress, a_path, a_rule, a_secret, a_service, a_split, a_tls

HELLO = "hello.default.example.com"
SHOP = "shop.example.com"
CLIENT = "203.0.113.7"  # the address a balancer's PROXY header says the client has


def config_xds(**data: str) -> dict:
    return synth.config_map("config-xds", {k.replace("_", "-"): v for k, v in data.items()})


async def hello_world(gateway) -> list[dict]:
    return [
        *await gateway.ready_revisions("hello-1"),
        synth.route("hello", [synth.target("hello-1", 100)]),
    ]


def raw_get(port: int, host: str, *, preface: bytes = b"", mark: str = "") -> tuple[int, dict]:
    """One GET over a fresh connection, after `preface` (a PROXY header); the status and the
    echoed request headers, or (0, {}) when the connection closed with no answer."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Mark: {mark}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(preface + request.encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return 0, {}
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    echoed = json.loads(body)["headers"] if status == 200 else {}
    return status, {k.lower(): v for k, v in echoed.items()}


def proxy_v1(port: int) -> bytes:
    return f"PROXY TCP4 {CLIENT} 127.0.0.1 40001 {port}\r\n".encode()


def proxy_v2(port: int) -> bytes:
    """The binary header: signature, version 2 PROXY command, TCP over IPv4, addresses."""
    addresses = socket.inet_aton(CLIENT) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", 40002, port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addresses


# -- access log -----------------------------------------------------------------------------


async def test_access_log_lines_carry_the_templates_fields_then_json_after_an_edit(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    template = "XDSLOG %REQ(:METHOD)% %REQ(:AUTHORITY)% %RESPONSE_CODE% mark=%REQ(X-MARK)%"
    gateway.write(
        [config_xds(enable_service_access_logging="true", service_access_log_template=template)],
        "config-xds.yaml",
    )
    await gateway.start(await hello_world(gateway))
    await gateway.wait_served(HELLO, "hello-1")
    pid = gateway.envoy_pid

    assert (await gateway.get(HELLO, headers={"X-Mark": "first"})).status == 200
    # Envoy writes its access log out every 10 s: the text line is looked for with the
    # JSON one, so that the test waits for one flush, not two.
    gateway.write(
        [config_xds(enable_service_access_logging="true", service_access_log_format="json")],
        "config-xds.yaml",
    )

    async def json_line() -> dict | None:
        await gateway.get(HELLO, headers={"X-Mark": "second", "User-Agent": "json-probe"})
        for text in gateway.envoy_output().splitlines():
            if text.startswith("{") and "json-probe" in text:
                return json.loads(text)
        return None

    await gateway.wait_until(json_line, what="a JSON access log line", timeout=40)
    assert f"XDSLOG GET {HELLO} 200 mark=first" in gateway.envoy_output().splitlines()
    entry = await json_line()
    assert entry is not None
    assert (entry["method"], entry["authority"], entry["response_code"]) == ("GET", HELLO, 200)
    assert entry["upstream_cluster"] == "default/hello-1"
    assert gateway.envoy_pid == pid, "Envoy was not restarted"


# -- PROXY protocol ---------------------------------------------------------------------------


async def test_proxy_protocol_v1_and_v2_give_the_revision_the_clients_address(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    await gateway.start(await hello_world(gateway))
    await gateway.wait_served(HELLO, "hello-1")
    pid, port = gateway.envoy_pid, gateway.external

    gateway.write([config_xds(enable_proxy_protocol="true")], "config-xds.yaml")

    async def through_proxy() -> bool:
        status, _ = await asyncio.to_thread(raw_get, port, HELLO, preface=proxy_v1(port))
        return status == 200

    await gateway.wait_until(through_proxy, what="the external listener to take PROXY headers")
    for preface in (proxy_v1(port), proxy_v2(port)):
        status, headers = await asyncio.to_thread(raw_get, port, HELLO, preface=preface)
        assert (status, headers.get("x-forwarded-for")) == (200, CLIENT), preface[:12]
    # No PROXY header: not through the balancer, refused with no answer.
    assert await asyncio.to_thread(raw_get, port, HELLO) == (0, {})
    # The internal listener is reached directly, with no header.
    assert (await gateway.get("hello.default.svc.cluster.local", internal=True)).status == 200
    assert gateway.envoy_pid == pid


# -- TLS policy -------------------------------------------------------------------------------


def tls_objects(ca: trustme.CA) -> list[dict]:
    cert = ca.issue_cert(SHOP)
    return [
        a_kingress(
            "shop",
            a_rule(SHOP, paths=[a_path(a_split("hello-1", 80))]),
            tls=[a_tls(SHOP, secret="shop-tls")],
        ),
        a_service("hello-1", revision="hello-1"),
        a_secret(
            "shop-tls",
            cert=b"".join(b.bytes() for b in cert.cert_chain_pems),
            key=cert.private_key_pem.bytes(),
        ),
    ]


def handshake(
    port: int,
    ca: trustme.CA,
    *,
    ciphers: str | None = None,
    version: ssl.TLSVersion | None = None,
) -> str:
    """Connect over TLS offering only `ciphers` / `version`, GET /; "ok <status>" or the error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=SHOP) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {SHOP}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(65536)
            return f"ok {head.split(b' ', 2)[1].decode()}"
    except (ssl.SSLError, ConnectionError) as e:
        return f"failed: {type(e).__name__}"


async def test_tls_policy_refuses_a_disallowed_cipher_or_version_and_takes_an_allowed_one(
    sotw_gateway,
) -> None:
    gateway = sotw_gateway
    ca = trustme.CA()
    allowed, refused = "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"
    tls12 = ssl.TLSVersion.TLSv1_2
    gateway.write([config_xds(cipher_suites=allowed, min_tls_version="1.2")], "config-xds.yaml")
    await gateway.start([*await gateway.ready_revisions("hello-1"), *tls_objects(ca)])
    pid, port = gateway.envoy_pid, gateway.tls

    def try_(**kw) -> str:
        return handshake(port, ca, **kw)

    async def serving() -> bool:
        return await asyncio.to_thread(try_, ciphers=allowed, version=tls12) == "ok 200"

    await gateway.wait_until(serving, what="the HTTPS listener with the allowed cipher")
    assert (await asyncio.to_thread(try_, ciphers=refused, version=tls12)).startswith("failed")
    assert await asyncio.to_thread(try_, version=ssl.TLSVersion.TLSv1_3) == "ok 200"

    # TLS 1.3 only, applied to the running Envoy: the TLS 1.2 client that passed is refused.
    gateway.write([config_xds(cipher_suites=allowed, min_tls_version="1.3")], "config-xds.yaml")

    async def tls12_refused() -> bool:
        return (await asyncio.to_thread(try_, ciphers=allowed, version=tls12)).startswith("failed")

    await gateway.wait_until(tls12_refused, what="TLS 1.2 to be refused")
    assert await asyncio.to_thread(try_, version=ssl.TLSVersion.TLSv1_3) == "ok 200"
    assert gateway.envoy_pid == pid


# -- every access log command we accept, Envoy accepts ----------------------------------------

# The commands that need an argument, with one.
_ARGUMENTS = {
    "REQ": "(:PATH)",
    "RESP": "(X-A)",
    "TRAILER": "(X-A)",
    "REQUEST_HEADER": "(X-A)",
    "RESPONSE_HEADER": "(X-A)",
    "RESPONSE_TRAILER": "(X-A)",
    "DYNAMIC_METADATA": "(a)",
    "CLUSTER_METADATA": "(a)",
    "UPSTREAM_METADATA": "(a)",
    "FILTER_STATE": "(a)",
    "UPSTREAM_FILTER_STATE": "(a)",
    "ENVIRONMENT": "(HOME)",
    "QUERY_PARAM": "(a)",
    "COMMON_DURATION": "(DS_RX_BEG:DS_RX_END:ms)",
}


def envoy_validates(template: str, workdir: Path) -> subprocess.CompletedProcess:
    """Envoy's `--mode validate` on a bootstrap holding our external listener, whose access
    log uses `template`."""
    options = GatewayOptions(access_log=True, access_log_template=template)
    listener = listener_resource(
        listener=Listener.EXTERNAL, address="127.0.0.1", port=1, options=options
    )
    config = bootstrap(xds_host="127.0.0.1", xds_port=1, admin_port=0)
    message = listener.message(listener_pb2.Listener)
    config["static_resources"]["listeners"] = [json_format.MessageToDict(message)]
    path = workdir / "validate.json"
    path.write_text(json.dumps(config))
    command = [str(require_envoy()), "--mode", "validate", "-c", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_envoy_accepts_every_access_log_command_we_accept_and_refuses_another(
    tmp_path: Path,
) -> None:
    every = " ".join(f"%{c}{_ARGUMENTS.get(c, '')}%" for c in sorted(FORMAT_COMMANDS))
    accepted = envoy_validates(every, tmp_path)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    refused = envoy_validates("%NOT_A_COMMAND%", tmp_path)
    assert refused.returncode != 0 and "NOT_A_COMMAND" in refused.stdout + refused.stderr
