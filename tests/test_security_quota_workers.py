"""Quotas end to end with two worker processes and several connections: one shared bucket,
one shared in-flight count, honest charges, the per-call limit, and a worker killed mid-call."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

import heml
from heml.errors import ResourceExhausted
from heml.server.auth import issue_key
from heml.v1 import heml_pb2 as pb

from .security_support import (
    CliServer,
    HeldStream,
    bearer,
    normalized,
    requests_for,
    stub_for,
    wait_for,
)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


KEYS = {
    "free": {},
    "rate": {"predictions_per_minute": 5 * 68},  # five single cancer predictions (68 slots each)
    "column": {"predictions_per_minute": 5000},  # one COLUMN block (4096), not two
    "small": {"predictions_per_minute": 4000},  # below one COLUMN block
    "conc": {"max_concurrent": 2},
    "solo": {"max_concurrent": 1},
}
PER_CALL_LIMIT = 10_000  # two COLUMN blocks, not three


@pytest.fixture(scope="module")
def two(model_dir, tmp_path_factory, cancer):
    folder = tmp_path_factory.mktemp("quota")
    keys = {name: issue_key(folder / "keys", name, **quota) for name, quota in KEYS.items()}
    server = CliServer(
        [
            "--models", str(model_dir), "--workers", "2", "--api-keys", str(folder / "keys"),
            "--max-samples-per-request", str(PER_CALL_LIMIT),
        ],
        folder / "server.log",
    )  # fmt: skip
    try:
        with heml.Client(server.address, api_key=keys["free"]) as client:
            model = client.model("cancer")
            row, col = requests_for(model, normalized(model, cancer[0].iloc[:1]))
        workers = _channels_per_worker(server, keys["free"])
        yield server, keys, workers, row, col
        for channels in workers.values():
            for channel, _stub in channels:
                channel.close()
    finally:
        server.stop()


def _channels_per_worker(server, key, want: int = 2, tries: int = 60) -> dict:
    """Open channels until each of the two workers has ``want`` of them (told by the log)."""
    workers: dict[int, list] = {}
    for i in range(tries):
        channel, stub = stub_for(server.address)
        tag = f"probe-{i}-{os.getpid()}"
        metadata = (*bearer(key), ("x-request-id", tag))
        stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata)
        pid = next(r["worker"] for r in server.rpc_lines() if r["request_id"] == tag)
        workers.setdefault(pid, [])
        if len(workers[pid]) < want:
            workers[pid].append((channel, stub))
        else:
            channel.close()
        if len(workers) == 2 and all(len(v) == want for v in workers.values()):
            return workers
    raise AssertionError(f"connections did not reach both workers: {list(workers)}")


def _stubs(workers) -> tuple[list, list]:
    a, b = sorted(workers)
    return [s for _c, s in workers[a]], [s for _c, s in workers[b]]


def _retry_after(exc: grpc.RpcError) -> float | None:
    meta = dict(exc.trailing_metadata() or ())
    return float(meta["retry-after"]) if "retry-after" in meta else None


def test_prediction_quota_is_one_bucket_for_both_workers(two, cancer):
    server, keys, workers, row, _col = two
    on_a, on_b = _stubs(workers)
    outcomes = []
    for i in range(10):  # alternate between the workers
        stub = (on_a if i % 2 == 0 else on_b)[0]
        try:
            stub.Predict(row, timeout=10, metadata=bearer(keys["rate"]))
            outcomes.append("OK")
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED, exc.details()
            assert "over its quota of 340 predictions per minute" in exc.details()
            # 68 tokens at 340/60 per second: about 12 s from empty
            assert 5.0 < _retry_after(exc) <= 12.01
            outcomes.append("EXHAUSTED")
    # one bucket of 340 = 5 × 68 slots for the key (per-process buckets would grant all 10)
    assert outcomes.count("OK") == 5, outcomes
    lines = [r for r in server.rpc_lines() if r["key_id"] == "rate"]
    assert len({r["worker"] for r in lines if r["status"] == "OK"}) == 2
    assert all(r["computed"] == 68 and r["n"] == 1 for r in lines if r["status"] == "OK")
    # the SDK hands the hint over as ResourceExhausted.retry_after
    with heml.Client(server.address, api_key=keys["rate"]) as client:
        model = client.model("cancer")
        with pytest.raises(ResourceExhausted) as info:
            model.predict(cancer[0].iloc[:1])
    assert 5.0 < info.value.retry_after <= 12.01


def test_a_column_block_is_charged_all_4096_slots_even_when_it_declares_one(two):
    _server, keys, workers, row, col = two
    on_a, on_b = _stubs(workers)
    assert col.n == 1 and len(col.ciphertexts) == 30
    on_a[0].Predict(col, timeout=10, metadata=bearer(keys["column"]))  # 4096 of 5000
    with pytest.raises(grpc.RpcError) as info:
        on_b[0].Predict(col, timeout=10, metadata=bearer(keys["column"]))
    assert info.value.code() == EXHAUSTED and "computes 4096" in info.value.details()
    assert _retry_after(info.value) > 30  # 4096 - 904 tokens at 83.3 per second
    # a block above the per-minute quota can never pass: said so, and no retry hint
    with pytest.raises(grpc.RpcError) as info:
        on_a[0].Predict(col, timeout=10, metadata=bearer(keys["small"]))
    assert info.value.code() == EXHAUSTED and "more than API key 'small'" in info.value.details()
    assert _retry_after(info.value) is None
    on_a[0].Predict(row, timeout=10, metadata=bearer(keys["small"]))  # ROW blocks still fit


def test_concurrency_limit_counts_calls_on_both_workers(two):
    _server, keys, workers, row, _col = two
    on_a, on_b = _stubs(workers)
    key = keys["conc"]
    first, second = HeldStream(on_a[0], row, key), HeldStream(on_b[0], row, key)
    try:
        for stub in (on_a[1], on_b[1]):  # one call in flight on each worker, limit 2
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=bearer(key))
            assert info.value.code() == EXHAUSTED
            assert "has 2 call(s) in flight, its limit is 2" in info.value.details()
            assert _retry_after(info.value) == 1.0
        first.finish()
        for stub in (on_a[1], on_b[1]):
            stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=bearer(key))
    finally:
        first.finish()
        second.finish()


def test_one_call_cannot_compute_more_than_the_per_call_limit(two):
    _server, keys, workers, _row, col = two
    on_a, _on_b = _stubs(workers)
    replies = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in on_a[0].PredictStream(iter([col, col, col]), 30, bearer(keys["free"])):
            replies.append(reply)
    assert len(replies) == 2  # 2 × 4096 ≤ 10000 < 3 × 4096
    assert info.value.code() == EXHAUSTED
    assert "above the server's limit of 10000 per call" in info.value.details()


def test_calls_in_flight_on_a_dead_worker_are_forgotten(two):
    """Kills a worker: keep this test last in the module."""
    server, keys, workers, row, _col = two
    pid_a = min(workers)
    on_a, on_b = _stubs(workers)
    key = keys["solo"]
    held = HeldStream(on_a[0], row, key)
    with pytest.raises(grpc.RpcError) as info:
        on_b[0].ListModels(pb.ListModelsRequest(), timeout=10, metadata=bearer(key))
    assert info.value.code() == EXHAUSTED
    os.kill(pid_a, signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        held.finish()

    def admitted():
        try:
            on_b[0].ListModels(pb.ListModelsRequest(), timeout=10, metadata=bearer(key))
            return True
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED
            return False

    wait_for(admitted, timeout=20, interval=0.1)  # the supervisor zeroed the dead slot
    assert f"worker {pid_a} exited" in server.log_text()
