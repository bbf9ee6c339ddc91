"""TLS and mutual TLS end to end, with a throwaway CA made for this test module."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import heml
from heml.cli import main as cli_main
from heml.errors import ServerUnavailable, Unauthenticated
from heml.server import ServerStartError
from heml.server.auth import issue_key

from .security_support import CliServer, TestCA, write_pem_files


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, its server and client certificates, and an unrelated CA with its own client."""
    folder = tmp_path_factory.mktemp("pki")
    ca, evil = TestCA("heml test CA"), TestCA("someone else's CA")
    files = {"ca": ca.pem, "evil_ca": evil.pem}
    files["server_cert"], files["server_key"] = ca.issue("heml server", server=True)
    files["client_cert"], files["client_key"] = ca.issue("alice", server=False)
    files["evil_cert"], files["evil_key"] = evil.issue("mallory", server=False)
    paths = write_pem_files(folder, files)
    return files, paths


def _client(port, **kw):
    return heml.Client(f"localhost:{port}", retries=0, timeout=10, **kw)


@pytest.fixture(scope="module")
def tls_server(model_dir, pki):
    _files, paths = pki
    with heml.serve(model_dir, tls_cert=paths["server_cert"], tls_key=paths["server_key"]) as s:
        yield s


def test_tls_serves_clients_that_trust_its_ca(tls_server, pki, cancer):
    files, _paths = pki
    with _client(tls_server.port, root_certificates=files["ca"]) as client:
        model = client.model("cancer")
        X, _y, clf = cancer
        assert (model.predict(X.iloc[:5]) == clf.predict(X.iloc[:5])).all()
    creds = grpc.ssl_channel_credentials(files["ca"])
    with grpc.secure_channel(f"localhost:{tls_server.port}", creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_is_refused_with_a_wrong_ca_or_in_plaintext(tls_server, pki):
    files, _paths = pki
    with (
        _client(tls_server.port, root_certificates=files["evil_ca"]) as client,
        pytest.raises(ServerUnavailable),
    ):
        client.models()
    with _client(tls_server.port) as client, pytest.raises(ServerUnavailable):
        client.models()  # a plaintext client gets no answer from a TLS-only port


@pytest.fixture(scope="module")
def mtls_server(model_dir, pki, tmp_path_factory):
    """`heml serve` with mTLS and API keys, configured by its command-line flags."""
    _files, paths = pki
    folder = tmp_path_factory.mktemp("mtls")
    key = issue_key(folder / "keys", "alice")
    server = CliServer(
        [
            "--models", str(model_dir), "--api-keys", str(folder / "keys"),
            "--tls-cert", str(paths["server_cert"]), "--tls-key", str(paths["server_key"]),
            "--tls-client-ca", str(paths["ca"]),
        ],
        folder / "server.log",
    )  # fmt: skip
    yield server, key
    server.stop()


def test_mtls_needs_a_client_certificate_from_its_ca(mtls_server, pki):
    server, key = mtls_server
    files, _paths = pki
    good = dict(
        root_certificates=files["ca"],
        client_cert=files["client_cert"],
        client_key=files["client_key"],
    )
    with _client(server.port, api_key=key, **good) as client:
        assert {m.name for m in client.models()} == {"cancer", "wine", "diabetes-raw"}
    # no client certificate: the handshake fails
    with (
        _client(server.port, api_key=key, root_certificates=files["ca"]) as client,
        pytest.raises(ServerUnavailable),
    ):
        client.models()
    # a certificate from another CA: the handshake fails
    evil = dict(good, client_cert=files["evil_cert"], client_key=files["evil_key"])
    with _client(server.port, api_key=key, **evil) as client, pytest.raises(ServerUnavailable):
        client.models()
    # mTLS and API keys are separate checks: a good certificate without a key is not enough
    with _client(server.port, **good) as client, pytest.raises(Unauthenticated):
        client.models()


def test_cli_client_flags_for_mtls(mtls_server, pki, capsys):
    server, key = mtls_server
    _files, paths = pki
    base = ["models", "--server", f"localhost:{server.port}", "--api-key", key, "--timeout", "10"]
    tls = ["--ca", str(paths["ca"]), "--cert", str(paths["client_cert"])]
    capsys.readouterr()
    assert cli_main([*base, *tls, "--key", str(paths["client_key"])]) == 0
    assert "cancer" in capsys.readouterr().out
    assert cli_main([*base, *tls]) == 2  # --cert without --key
    assert "--cert and --key go together" in capsys.readouterr().err


def test_tls_mistakes_stop_the_server_at_startup(model_dir, pki):
    _files, paths = pki
    with pytest.raises(ServerStartError, match="does not match"):
        heml.serve(model_dir, tls_cert=paths["server_cert"], tls_key=paths["client_key"])
    with pytest.raises(ServerStartError, match="not PEM"):
        heml.serve(model_dir, tls_cert=paths["server_cert"], tls_key=model_dir / "cancer.json")
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        heml.serve(model_dir, tls_cert=paths["server_cert"])
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        heml.Client("localhost:1", client_cert=b"x")


def test_an_api_key_over_plaintext_to_a_remote_host_warns():
    with (
        pytest.warns(UserWarning, match="without TLS"),
        heml.Client("10.0.0.1:1", api_key="k", insecure=True),
    ):
        pass
