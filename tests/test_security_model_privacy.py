"""The model-privacy quota (lifetime slots per key, below d) with API keys and two workers:
one count for the key, not one per worker process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import heml
from heml.errors import InvalidRequest, ModelNotFound, ResourceExhausted
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


# ---------------------------------------------------------------------- hostile clients, live
def _secret_model(tmp_path, cancer, quota: int = 12):
    _X, _y, clf = cancer
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    heml.export(clf, name="secret", model_privacy=True, max_predictions_per_key=quota).save(
        models / "secret.json"
    )
    return models


def _private_request(model, n: int, key_id: str | None = None) -> pb.PredictRequest:
    """A well-formed PRIVATE block of n zero samples (key_id: the model's own unless given)."""
    codec = model._codec
    block = codec.blocks(n)[0]
    cts = codec.encrypt(np.zeros((n, model.info.n_features)), block)
    request = model._header(block, len(cts))
    request.ciphertexts.extend(cts)
    if key_id is not None:
        request.key_id = key_id
    return request


def test_the_lifetime_quota_is_charged_after_the_per_call_limit_and_only_for_known_keys(
    tmp_path, cancer
):
    models = _secret_model(tmp_path, cancer)
    key = issue_key(tmp_path / "keys", "alice")
    # one private block computes 136 slots: a second block in the same call passes 200
    with (
        heml.serve(models, api_keys=tmp_path / "keys", max_samples_per_request=200) as server,
        heml.Client(server.address, api_key=key) as client,
    ):
        model = client.model("secret")
        first, second = _private_request(model, 6), _private_request(model, 6)
        replies = client._stub.PredictStream(
            iter([first, second]), timeout=60, metadata=bearer(key)
        )
        got = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in replies:
                got.append(reply)
        assert len(got) == 1 and info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 200 per call" in info.value.details()
        # an unknown (well-formed) key id is refused before the quota is touched
        with pytest.raises(ModelNotFound, match="not registered"):
            client._unary(client._stub.Predict, _private_request(model, 6, key_id="0" * 64))
        # 6 of 12 used: the refused block and the unknown key charged nothing
        model.predict_proba(cancer[0].iloc[:6])
        with pytest.raises(ResourceExhausted, match=r"\(12 used, 1 requested\)"):
            model.predict_proba(cancer[0].iloc[:1])


def test_hostile_key_ids_are_refused_without_keeping_state(tmp_path, cancer):
    from heml.bench import _rss_mb

    models = _secret_model(tmp_path, cancer)
    with (
        heml.serve(models, max_receive_bytes=8 << 20) as server,
        heml.Client(server.address) as client,
    ):
        model = client.model("secret")
        base = _private_request(model, 1)
        (pid,) = server.current_worker_pids()
        with pytest.raises(InvalidRequest, match="64 lowercase hex"):
            client._unary(client._stub.Predict, _private_request(model, 1, key_id="A" * 64))
        before = _rss_mb(pid)
        for i in range(40):  # 3 MiB key ids: each one would be kept forever before
            base.key_id = (f"{i:x}" * (3 << 20))[: 3 << 20]
            with pytest.raises(InvalidRequest, match="key_id must be"):
                client._unary(client._stub.Predict, base)
        for i in range(200):  # well formed, never registered
            base.key_id = f"{i:064x}"
            with pytest.raises(ModelNotFound, match="not registered"):
                client._unary(client._stub.Predict, base)
        grown = _rss_mb(pid) - before
        # 40 kept ids were 120 MiB; gRPC's and malloc's buffers for 3 MiB messages alone measured
        # 30-45 MiB under load, so the limit sits halfway between the two
        assert grown < 75, f"worker grew by {grown:.0f} MiB"
        model.predict_proba(cancer[0].iloc[:2])  # still serving


def test_a_registration_flood_evicts_only_the_flooders_keys(tmp_path, cancer):
    from heml.he.encrypt import public_key_p0
    from heml.he.keys import KeySet
    from heml.he.private import KEY_NONCE_BYTES, MAX_KEYS_PER_IDENTITY

    models = _secret_model(tmp_path, cancer)
    alice, mallory = issue_key(tmp_path / "keys", "alice"), issue_key(tmp_path / "keys", "mallory")
    with (
        heml.serve(models, api_keys=tmp_path / "keys") as server,
        heml.Client(server.address, api_key=alice) as a,
        heml.Client(server.address, api_key=mallory) as m,
    ):
        victim = a.model("secret")
        victim_key = victim._register_key()
        plan = m.model("secret").info.plans["private"]
        sk = KeySet().get(plan.params)
        flood = []
        for i in range(3 * MAX_KEYS_PER_IDENTITY):
            nonce = i.to_bytes(KEY_NONCE_BYTES, "big")
            request = pb.RegisterKeyRequest(
                model="secret", public_key=public_key_p0(sk, nonce), key_nonce=nonce
            )
            flood.append(m._unary(m._stub.RegisterKey, request).key_id)
        # alice's key survives: her block is answered without registering again
        reply = a._unary(a._stub.Predict, _private_request(victim, 1, key_id=victim_key))
        assert len(reply.replies) == 1
        # mallory kept only her newest keys
        flooder = m.model("secret")
        m._unary(m._stub.Predict, _private_request(flooder, 1, key_id=flood[-1]))
        with pytest.raises(ModelNotFound, match="not registered"):
            m._unary(m._stub.Predict, _private_request(flooder, 1, key_id=flood[0]))


def test_unary_blocks_refused_for_their_deadline_charge_no_lifetime_quota(tmp_path, cancer):
    """The unary path too (the streamed one is tested above): the lifetime quota is charged
    after the deadline check, so blocks that arrive without time to compute them leave it."""
    models = _secret_model(tmp_path, cancer)
    with heml.serve(models) as server, heml.Client(server.address) as client:
        model = client.model("secret")
        request = _private_request(model, 1)
        refused = 0
        for _ in range(40):  # the server sees < 2 ms left for its one ciphertext
            with pytest.raises(grpc.RpcError) as info:
                client._stub.Predict(request, timeout=0.001)
            refused += info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert refused == 40
        model.predict_proba(cancer[0].iloc[:12])  # all 12 are left
        with pytest.raises(ResourceExhausted, match=r"\(12 used, 1 requested\)"):
            model.predict_proba(cancer[0].iloc[:1])


def test_without_api_keys_a_peer_host_is_one_identity_whatever_its_port(tmp_path, cancer):
    """The per-identity cap binds to the peer's host: registrations over fresh connections
    (a new source port each) still count against one cap of MAX_KEYS_PER_IDENTITY, so a
    client cannot escape it by reconnecting."""
    from heml.he.encrypt import public_key_p0
    from heml.he.keys import KeySet
    from heml.he.private import KEY_NONCE_BYTES, MAX_KEYS_PER_IDENTITY

    models = _secret_model(tmp_path, cancer)
    with heml.serve(models) as server, heml.Client(server.address) as c:
        plan = c.model("secret").info.plans["private"]
        sk = KeySet().get(plan.params)
        ids = []
        for i in range(MAX_KEYS_PER_IDENTITY + 1):
            own_connection(c)  # a new channel: a new source port
            nonce = i.to_bytes(KEY_NONCE_BYTES, "big")
            request = pb.RegisterKeyRequest(
                model="secret", public_key=public_key_p0(sk, nonce), key_nonce=nonce
            )
            ids.append(c._unary(c._stub.RegisterKey, request).key_id)
        model = c.model("secret")
        c._unary(c._stub.Predict, _private_request(model, 1, key_id=ids[-1]))
        with pytest.raises(ModelNotFound, match="not registered"):  # the oldest went
            c._unary(c._stub.Predict, _private_request(model, 1, key_id=ids[0]))
