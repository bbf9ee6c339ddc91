"""The model-privacy quota (lifetime slots per key, below d) with API keys and two workers:
one count for the key, not one per worker process."""

from __future__ import annotations

import pytest

import heml
from heml.errors import ResourceExhausted
from heml.server.auth import issue_key
from heml.server.quota import QuotaTable
from heml.v1 import heml_pb2 as pb

from .security_support import CliServer, bearer, own_connection


def test_take_total_never_refills(tmp_path):
    table = QuotaTable.create(tmp_path / "quota", workers=1)
    assert table.take_total("private/m/1/alice", 8, 12) is None
    assert table.take_total("private/m/1/alice", 5, 12) == 8  # 8 used, 5 more would pass 12
    assert table.take_total("private/m/1/alice", 4, 12) is None
    assert table.take_total("private/m/1/alice", 1, 12) == 12
    assert table.take_total("private/m/1/bob", 12, 12) is None  # per id
    table.close()


def _clients_on_both_workers(server, key, tries: int = 60) -> list:
    """SDK clients with connections of their own, one per worker (told by the request log)."""
    by_worker: dict[int, heml.Client] = {}
    for i in range(tries):
        client = own_connection(heml.Client(server.address, api_key=key, retries=0))
        tag = f"mp-probe-{i}"
        client._stub.ListModels(
            pb.ListModelsRequest(), timeout=10, metadata=(*bearer(key), ("x-request-id", tag))
        )
        pid = next(r["worker"] for r in server.rpc_lines() if r["request_id"] == tag)
        if pid in by_worker:
            client.close()
        else:
            by_worker[pid] = client
        if len(by_worker) == 2:
            return list(by_worker.values())
    raise AssertionError("connections did not reach both workers")


def test_the_model_privacy_quota_is_shared_by_the_workers(tmp_path, cancer):
    X, _y, clf = cancer
    models = tmp_path / "models"
    models.mkdir()
    heml.export(clf, name="secret", model_privacy=True, max_predictions_per_key=12).save(
        models / "secret.json"
    )
    key = issue_key(tmp_path / "keys", "alice")
    server = CliServer(
        ["--models", str(models), "--workers", "2", "--api-keys", str(tmp_path / "keys")],
        tmp_path / "server.log",
    )
    try:
        first, second = _clients_on_both_workers(server, key)
        first.model("secret").predict_proba(X.iloc[:8])  # 8 of 12, on one worker
        with pytest.raises(ResourceExhausted, match=r"quota of 12 .* \(8 used, 5 requested\)"):
            second.model("secret").predict_proba(X.iloc[:5])  # the other worker knows
        second.model("secret").predict_proba(X.iloc[:4])  # exactly up to 12
        first.close()
        second.close()
    finally:
        server.stop()
    workers = {r["worker"] for r in server.rpc_lines() if r["method"] == "Predict"}
    assert len(workers) == 2
