"""The request log (one JSON line per call, no secrets) and Prometheus metrics from two workers."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import heml
from heml.errors import ResourceExhausted
from heml.server.auth import issue_key
from heml.v1 import heml_pb2 as pb

from .security_support import CliServer, bearer, normalized, requests_for, stub_for, wait_for

FIELDS = {
    "event", "request_id", "method", "key_id", "model", "version", "layout", "n",
    "ciphertexts", "computed", "blocks", "latency_ms", "status", "worker", "peer",
}  # fmt: skip
ODD_VALUE = 17.123456789  # a feature value that would stand out in a log


@pytest.fixture(scope="module")
def observed(model_dir, tmp_path_factory, cancer):
    """A two-worker server with keys and metrics, after a known mix of calls."""
    folder = tmp_path_factory.mktemp("observed")
    key = issue_key(folder / "keys", "alice")
    tight = issue_key(folder / "keys", "tight", predictions_per_minute=100)
    server = CliServer(
        [
            "--models", str(model_dir), "--workers", "2", "--api-keys", str(folder / "keys"),
            "--metrics-port", "0",
        ],
        folder / "server.log",
    )  # fmt: skip
    X = cancer[0].iloc[:1].copy()
    X.iloc[0, 0] = ODD_VALUE
    sent = {}
    try:
        with heml.Client(server.address, api_key=key) as client:
            model = client.model("cancer")
            row, col = requests_for(model, normalized(model, X))
            sent["ciphertext"], sent["row"] = row.ciphertexts[0], row
            model.predict(X)  # SDK: GetModel + Predict
        sent["raw"] = 0
        while sent["raw"] < 8 or len({r["worker"] for r in server.rpc_lines()}) < 2:
            channel, stub = stub_for(server.address)  # new connections: both workers serve
            stub.Predict(row, timeout=10, metadata=bearer(key))
            sent["raw"] += 1
            channel.close()
            assert sent["raw"] < 64, "connections never reached the second worker"
        channel, stub = stub_for(server.address)
        list(stub.PredictStream(iter([col, col]), 10, bearer(key)))  # one call, two blocks
        with pytest.raises(grpc.RpcError):
            stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=bearer("heml_wrong"))
        stub.Predict(row, timeout=10, metadata=bearer(tight))  # 68 of 100
        with pytest.raises(grpc.RpcError):
            stub.Predict(row, timeout=10, metadata=bearer(tight))
        channel.close()
        with heml.Client(server.address, api_key=tight) as client, pytest.raises(ResourceExhausted):
            client.model("cancer").predict(X)
        yield server, {"alice": key, "tight": tight}, sent
    finally:
        server.stop()


def test_one_json_line_per_call_with_what_the_call_did(observed):
    server, _keys, sent = observed
    lines = server.rpc_lines()
    assert lines and all(set(r) == FIELDS for r in lines)
    predicts = [r for r in lines if r["method"] == "Predict" and r["key_id"] == "alice"]
    assert len(predicts) == 1 + sent["raw"] and all(r["status"] == "OK" for r in predicts)
    for r in predicts:
        assert (r["model"], r["version"], r["layout"], r["n"]) == ("cancer", 1, "row", 1)
        assert (r["ciphertexts"], r["computed"], r["blocks"]) == (1, 68, 1)
        assert r["latency_ms"] > 0 and r["peer"].startswith("ipv4:127.0.0.1:")
        assert len(r["request_id"]) == 16  # the SDK's request id from the block header
    assert len({r["worker"] for r in predicts}) == 2
    (stream,) = [r for r in lines if r["method"] == "PredictStream"]
    assert (stream["n"], stream["ciphertexts"], stream["computed"], stream["blocks"]) == (
        2, 60, 8192, 2,
    )  # fmt: skip
    assert stream["layout"] == "column" and stream["status"] == "OK"
    (denied,) = [r for r in lines if r["status"] == "UNAUTHENTICATED"]
    assert (denied["method"], denied["key_id"], denied["model"]) == ("ListModels", "", "")
    tight = [r["status"] for r in lines if r["key_id"] == "tight" and r["method"] == "Predict"]
    assert tight == ["OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    (get,) = [r for r in lines if r["method"] == "GetModel" and r["key_id"] == "alice"]
    assert (get["model"], get["status"]) == ("cancer", "OK")


def test_the_log_holds_no_keys_features_or_ciphertexts(observed):
    server, keys, sent = observed
    text = server.log_text()
    ct = sent["ciphertext"]
    secrets = [
        *keys.values(),
        *(k[5:25] for k in keys.values()),  # any recognizable part of a key
        *(hashlib.sha256(k.encode()).hexdigest()[:16] for k in keys.values()),
        "heml_wrong",
        "17.123456",
        ct[:16].hex(),
        base64.b64encode(ct[:15]).decode(),
    ]
    for s in secrets:
        assert s not in text, s
    assert ct[:16] not in server.log_path.read_bytes()


def _scrape(server) -> dict:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _get(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_over_both_workers(observed):
    server, _keys, sent = observed
    lines = server.rpc_lines()
    m = _scrape(server)
    ok = 2 + sent["raw"]  # the SDK's, the raw ones, the tight key's first
    assert sum(r["method"] == "Predict" and r["status"] == "OK" for r in lines) == ok
    assert _get(m, "heml_requests_total", method="Predict", model="cancer", status="OK") == ok
    assert len({r["worker"] for r in lines if r["method"] == "Predict"}) == 2
    assert _get(m, "heml_requests_total", method="ListModels", model="", status="UNAUTHENTICATED")
    assert _get(m, "heml_requests_total", method="PredictStream", model="cancer", status="OK") == 1
    # computed slots: 68 per admitted ROW block, 4096 per COLUMN block; requested: n
    admitted = sum(r["computed"] for r in lines if r["status"] == "OK")
    assert _get(m, "heml_predictions_computed_total", model="cancer") == admitted == ok * 68 + 8192
    assert _get(m, "heml_predictions_requested_total", model="cancer") == ok + 2
    assert _get(m, "heml_quota_rejections_total", key_id="tight", limit="rate") == 2
    assert _get(m, "heml_request_duration_seconds_count", method="Predict") == sum(
        r["method"] == "Predict" for r in lines
    )


def test_metrics_survive_a_worker_restart(observed):
    """Kills a worker: keep this test last in the module."""
    server, keys, sent = observed
    name = ("heml_requests_total", (("method", "Predict"), ("model", "cancer"), ("status", "OK")))
    ok = 2 + sent["raw"]
    assert _scrape(server)[name] == ok
    victim = next(r["worker"] for r in server.rpc_lines() if r["method"] == "Predict")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"worker {victim} exited" in server.log_text(), timeout=10)
    assert _scrape(server)[name] == ok  # the dead worker's counts are kept

    def predict_once() -> bool:
        channel, stub = stub_for(server.address)
        try:
            stub.Predict(sent["row"], timeout=5, metadata=bearer(keys["alice"]))
            return True
        except grpc.RpcError:
            return False
        finally:
            channel.close()

    wait_for(predict_once, timeout=15)
    assert _scrape(server)[name] == ok + 1
