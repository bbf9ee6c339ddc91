"""TLS and mutual TLS for the gRPC port.

``tls_cert`` + ``tls_key`` (PEM) serve TLS only (no plaintext port). ``tls_client_ca`` (PEM
bundle) also requires every client to present a certificate signed by one of those CAs
(mTLS); gRPC rejects a missing or foreign certificate during the handshake, before any
handler runs. Files are checked in the supervisor with the standard ``ssl`` module (readable,
PEM, key matches certificate) so a mistake stops ``heml serve`` with a clear message instead
of failing in every worker; workers read them again after the fork.

Even though features and predictions are encrypted end to end, TLS is needed in production:
the API key travels in call metadata, and TLS keeps it (and the model metadata) private.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import HemlError


class TLSConfigError(HemlError, ValueError):
    """Unusable TLS settings: a missing file, bad PEM, or a key that does not match."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def check_files(cert: str | None, key: str | None, client_ca: str | None) -> None:
    """Fail early, in the supervisor, on any TLS file problem (raises TLSConfigError)."""
    if cert is None and key is None and client_ca is None:
        return
    if cert is None or key is None:
        raise TLSConfigError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    _read(cert, "TLS certificate")
    _read(key, "TLS key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"TLS key {key} does not match certificate {cert} or is unusable ({exc.reason})"
        ) from None
    if client_ca is not None:
        _read(client_ca, "client CA bundle")
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"client CA bundle {client_ca} is unusable ({exc.reason})"
            ) from None


def add_port(server, address: str, cert: str | None, key: str | None, client_ca: str | None):
    """Bind ``address`` on ``server``: TLS (mTLS with ``client_ca``) or plaintext."""
    import grpc

    if cert is None:
        return server.add_insecure_port(address)
    ca = _read(client_ca, "client CA bundle") if client_ca else None
    credentials = grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
    return server.add_secure_port(address, credentials)
