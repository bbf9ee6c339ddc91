"""API keys on a real server: UNAUTHENTICATED for every method (streaming too), health checks
without a key, the SDK and CLI, keys issued and revoked while serving, unsafe key files."""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import heml
from heml.errors import Unauthenticated
from heml.server import ServerStartError
from heml.server.auth import issue_key
from heml.v1 import heml_pb2 as pb

from .security_support import (
    HEML,
    bearer,
    normalized,
    requests_for,
    run_cli,
    stub_for,
    wait_for,
)

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def heml_cli(*args, check=True):
    """The CLI as a subprocess (for `heml serve`, which owns signals and forks)."""
    proc = subprocess.run([*HEML, *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture(scope="module")
def keyed(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "api-keys.jsonl"
    key = issue_key(path, "alice")
    with heml.serve(model_dir, api_keys=path) as server:
        yield server, path, key


def test_calls_without_a_valid_key_are_unauthenticated(keyed, cancer):
    server, _path, key = keyed
    with heml.Client(server.address, api_key=key) as client:
        model = client.model("cancer")
        row, _col = requests_for(model, normalized(model, cancer[0].iloc[:1]))
    channel, stub = stub_for(server.address)
    calls = [
        ("ListModels", lambda md: stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=md)),
        ("GetModel", lambda md: stub.GetModel(pb.GetModelRequest(name="cancer"), 10, md)),
        ("Predict", lambda md: stub.Predict(row, timeout=10, metadata=md)),
        # a streaming method: the rejection must be a streaming handler (clean status)
        ("PredictStream", lambda md: list(stub.PredictStream(iter([row]), 10, md))),
    ]
    for name, call in calls:
        for metadata, message in [
            ((), "missing API key"),
            (bearer("heml_" + "A" * 43), "invalid API key"),
            ((("authorization", f"Token {key}"),), "malformed"),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(metadata)
            assert info.value.code() == UNAUTH, (name, info.value.details())
            assert message in info.value.details(), (name, info.value.details())
        assert call(bearer(key))  # the same call with the key goes through
    channel.close()


def test_health_checks_need_no_key(keyed):
    server, _path, _key = keyed
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service="heml.v1.Inference"), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_sdk_and_cli_with_and_without_a_key(keyed, cancer, capsys, monkeypatch):
    server, _path, key = keyed
    with heml.Client(server.address) as client, pytest.raises(Unauthenticated, match="API key"):
        client.models()
    with heml.Client(server.address, api_key=key + "\n") as client:  # e.g. read from a file
        model = client.model("cancer")
        X, _y, clf = cancer
        assert (model.predict(X.iloc[:3]) == clf.predict(X.iloc[:3])).all()
    code, _, err = run_cli(capsys, "models", "--server", server.address, "--timeout", "10")
    assert code == 1 and "UNAUTHENTICATED" in err
    monkeypatch.setenv("HEML_API_KEY", key)
    code, out, err = run_cli(capsys, "models", "--server", server.address)
    assert code == 0 and "cancer" in out
    assert key not in out + err


def test_keys_issued_or_revoked_while_serving_take_effect(keyed, capsys):
    server, path, _key = keyed
    code, out, _ = run_cli(capsys, "keys", "issue", "--api-keys", str(path), "--id", "carol")
    assert code == 0
    new = out.strip()

    def accepted(k):
        with heml.Client(server.address, api_key=k, retries=0) as client:
            try:
                return bool(client.models())
            except Unauthenticated:
                return False

    wait_for(lambda: accepted(new), timeout=10)
    assert run_cli(capsys, "keys", "revoke", "--api-keys", str(path), "--id", "carol")[0] == 0
    wait_for(lambda: not accepted(new), timeout=10)


def test_server_refuses_to_start_with_an_unsafe_or_broken_key_file(model_dir, tmp_path):
    path = tmp_path / "keys"
    issue_key(path, "alice")
    os.chmod(path, 0o666)
    with pytest.raises(ServerStartError, match="writable by group or others"):
        heml.serve(model_dir, api_keys=path)
    proc = heml_cli("serve", "--models", str(model_dir), "--api-keys", str(path), check=False)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
    with pytest.raises(ServerStartError, match="heml keys issue"):
        heml.serve(model_dir, api_keys=tmp_path / "none")
