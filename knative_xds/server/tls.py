"""TLS for ADS: the server's certificate files, checked before anything listens.

gRPC reads PEM bytes and reports a bad or mismatched file only as a handshake
that fails later, with no file named. So each file is read and checked here
with the standard library's `ssl` (a key that does not match its certificate,
a CA file with no certificate), and each error names the flag and the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsFileError(OSError):
    """A certificate, key or CA file that cannot be used; the message names flag and file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: a certificate and its key, and the CA that the other side must be signed by.

    For the server, `ca` (from --client-ca) makes a client certificate required;
    for a client, `ca` is what the server's certificate is verified against.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    # The command-line flags these came from, for the error messages.
    cert_flag: str = "--tls-cert"
    key_flag: str = "--tls-key"
    ca_flag: str = "--tls-ca"


def read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsFileError(f"{flag} {path}: cannot read it ({e.strerror or e})") from e
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def check(files: TlsFiles) -> None:
    """Raise TlsFileError unless every file given is readable PEM and the key matches."""
    if (files.cert is None) != (files.key is None):
        given, path, missing = (
            (files.cert_flag, files.cert, files.key_flag)
            if files.cert
            else (files.key_flag, files.key, files.cert_flag)
        )
        raise TlsFileError(
            f"{given} {path} needs {missing} too: a certificate goes with its private key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if files.cert is not None and files.key is not None:
        read(files.cert, files.cert_flag)
        read(files.key, files.key_flag)
        try:
            context.load_cert_chain(files.cert, files.key)
        except ssl.SSLError as e:
            raise TlsFileError(
                f"{files.key_flag} {files.key} does not go with {files.cert_flag} {files.cert} "
                f"(or one of them is not a valid PEM certificate/key): {e.reason or e}"
            ) from e
    if files.ca is not None:
        read(files.ca, files.ca_flag)
        try:
            context.load_verify_locations(cafile=files.ca)
        except ssl.SSLError as e:
            raise TlsFileError(
                f"{files.ca_flag} {files.ca}: not a PEM CA certificate ({e.reason or e})"
            ) from e


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with a CA, a client must present one it signed."""
    if files.cert is None or files.key is None:
        raise TlsFileError(f"TLS on ADS needs {files.cert_flag} and {files.key_flag}")
    check(files)
    pair = (read(files.key, files.key_flag), read(files.cert, files.cert_flag))
    ca = read(files.ca, files.ca_flag) if files.ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """A client's TLS: verify the server against `ca` (else the system's), present a cert if given."""
    check(files)
    return grpc.ssl_channel_credentials(
        root_certificates=read(files.ca, files.ca_flag) if files.ca else None,
        private_key=read(files.key, files.key_flag) if files.key else None,
        certificate_chain=read(files.cert, files.cert_flag) if files.cert else None,
    )
