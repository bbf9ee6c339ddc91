"""Helpers for the tests/test_security_*.py files: a CLI server with its log, raw stubs,
valid encrypted requests, log parsing, and a throwaway certificate authority."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from heml.he.scoring import Block
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

HEML = [sys.executable, "-m", "heml"]


class CliServer:
    """``heml serve …`` in a subprocess, stderr (the log) in a file."""

    def __init__(self, args: list[str], log_path: Path, timeout: float = 60) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*HEML, "serve", "--port", "0", "--log-level", "INFO", *args],
            stderr=self._log,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            text = log_path.read_text()
            found = re.search(r"heml serving \d+ model\(s\) on [^\s]+:(\d+) with", text)
            if found:
                self.port = int(found.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"heml serve did not start:\n{text}")
            time.sleep(0.05)
        metrics = re.search(r"metrics on http://[^\s]+:(\d+)/metrics", text)
        self.metrics_port = int(metrics.group(1)) if metrics else None
        self.address = f"localhost:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text()

    def rpc_lines(self) -> list[dict]:
        return rpc_lines(self.log_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (`heml` starts slowly; use for commands that own no process
    state — not `serve`)."""
    from heml.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def rpc_lines(text: str) -> list[dict]:
    """The request-log records in a server log (JSON objects after the log prefix)."""
    out = []
    for line in text.splitlines():
        start = line.find('{"event":"rpc"')
        if start >= 0:
            out.append(json.loads(line[start:]))
    return out


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def stub_for(address: str, credentials=None):
    """A channel of its own: gRPC shares one connection between same-target channels of a
    process unless each has a local subchannel pool (then the kernel may pick another worker)."""
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    return channel, heml_pb2_grpc.InferenceStub(channel)


def requests_for(model, Z, *, row_n: int = 1, column_n: int = 1):
    """A valid ROW request of ``row_n`` samples and a COLUMN request of ``column_n``
    samples (``model`` is an SDK RemoteModel; Z normalized features)."""
    codec = model._codec
    layout, s = codec.choose(row_n, "row")
    row_block = Block(0, row_n, layout, s)
    row = model._header(row_block, 0)
    row.ciphertexts.extend(codec.encrypt(Z[:row_n], row_block))
    col_block = Block(0, column_n, "column", 0)
    col = model._header(col_block, 0)
    col.ciphertexts.extend(codec.encrypt(Z[:column_n], col_block))
    return row, col


def normalized(model, X):
    info = model.info
    return info.bounds.normalize(info.preprocessing.model_features(X, info.bounds))


def as_request(message: pb.PredictRequest, **changes) -> pb.PredictRequest:
    out = pb.PredictRequest()
    out.CopyFrom(message)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


class HeldStream:
    """A PredictStream kept open after its first reply (a call in flight on one worker)."""

    def __init__(self, stub, request, key: str | None = None) -> None:
        self._release = threading.Event()

        def messages():
            yield request
            self._release.wait(60)

        metadata = bearer(key) if key else ()
        self.responses = stub.PredictStream(messages(), timeout=90, metadata=metadata)
        next(self.responses)  # the server is running the call (and waits for more)

    def finish(self) -> None:
        self._release.set()
        assert list(self.responses) == []


# ---------------------------------------------------------------------- throwaway CA
def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestCA:
    """A certificate authority that lives for one test session (EC P-256, one day)."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for a server (localhost) or a client."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def own_connection(client):
    """Give an SDK Client a connection of its own (see stub_for), so that several clients in
    one test process can reach different workers."""
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.enable_retries", 0),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    client._channel.close()
    client._channel = grpc.insecure_channel(client.target, options=options)
    client._stub = heml_pb2_grpc.InferenceStub(client._channel)
    return client


def write_pem_files(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Write each PEM as folder/NAME.pem, readable by the owner only; return the paths."""
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(data)
        paths[name].chmod(0o600)
    return paths
