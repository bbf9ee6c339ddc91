"""The Redis state backend (heml.server.state.redis_backend) against a real redis-server.

Two RedisState objects stand for two replicas (each is what one worker process holds); the
embedded backend, one per replica, is the positive control that shows what sharing fixes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from types import SimpleNamespace

import pytest

from heml.errors import InvalidCiphertext
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.private import KEY_NONCE_BYTES, PublicKeyStore, default_privacy_params
from heml.server.auth import AuthError, issue_key, read_key_file
from heml.server.quota import QuotaTable
from heml.server.state import EmbeddedQuotas, StateUnavailable, check_state_url
from heml.server.state import redis_backend as rb

from .cluster_support import Redis

PARAMS = default_privacy_params()


@pytest.fixture(scope="module")
def redis_server():
    server = Redis()
    yield server
    server.stop()


@pytest.fixture
def make_redis():
    """Start redis-servers of a test's own (stopped at teardown, whatever the test raised)."""
    made: list[Redis] = []

    def make(persist: bool = False) -> Redis:
        made.append(Redis(persist=persist))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.client().flushdb()
    return redis_server.url


@pytest.fixture
def states(redis_url):
    made = []

    def make(**kw):
        state = rb.RedisState(redis_url, start=False, **kw)
        made.append(state)
        return state

    yield make
    for s in made:
        s.close()


def _bucket(client, key_id: str) -> dict:
    raw = client.hgetall(f"heml:q:{key_id}")
    return {k.decode(): v.decode() for k, v in raw.items()}


# ---------------------------------------------------------------------- quotas
def test_one_bucket_for_two_replicas_where_embedded_gives_one_each(tmp_path, states):
    # positive control: each replica's own table grants the whole quota
    tables = [QuotaTable.create(tmp_path / f"q{i}", workers=1) for i in range(2)]
    embedded = [EmbeddedQuotas(t, 0) for t in tables]
    granted = sum(q.take("alice", 1, 10, f"c{i}") is None for i in range(10) for q in embedded)
    assert granted == 20
    for t in tables:
        t.close()
    shared = [states().quotas, states().quotas]
    granted = sum(q.take("alice", 1, 10, f"c{i}-{j}") is None for i in range(10) for j, q in
                  enumerate(shared))  # fmt: skip
    assert granted == 10
    wait = shared[0].take("alice", 1, 10, "late")
    assert 0 < wait <= 6.1  # one token at 10/minute
    assert shared[1].take("alice", 11, 10, "huge") == math.inf
    assert shared[0].charged("alice") == 10


def test_a_lost_reply_is_retried_without_charging_twice(states, monkeypatch):
    state = states()
    script = state._scripts["take"]
    calls = []

    def ran_but_reply_lost(*args, **kwargs):
        result = script(*args, **kwargs)  # Redis applied it...
        calls.append(result)
        if len(calls) == 1:
            import redis

            raise redis.ConnectionError("connection reset")  # ...and the reply never came
        return result

    monkeypatch.setitem(state._scripts, "take", ran_but_reply_lost)
    assert state.quotas.take("bob", 4, 10, "call.0") is None
    assert len(calls) == 2  # retried once, with the same charge id
    assert state.quotas.charged("bob") == 4
    assert float(_bucket(state.client, "bob")["tokens"]) == pytest.approx(6, abs=0.01)
    # a new charge id is a new charge (the guard above is what made the retry free)
    assert state.quotas.take("bob", 4, 10, "call.1") is None
    assert state.quotas.charged("bob") == 8


def test_void_refunds_a_charge_once_and_a_void_before_the_charge_blocks_it(states):
    q = states().quotas
    assert q.take("carol", 3, 60, "x.0") is None
    assert q.take_total("private/m/1/carol", 2, 5, "x.1") is None
    q.void(["x.0", "x.1"])
    q.void(["x.0", "x.1"])  # twice: refunded once
    assert q.charged("carol") == 0
    assert float(_bucket(q.state.client, "carol")["tokens"]) == pytest.approx(60, abs=0.1)
    assert q.state.client.hget("heml:t:private/m/1/carol", "used") == b"0"
    q.void(["y.0"])  # voided before it ran (its call gave up): the charge cannot land later
    with pytest.raises(StateUnavailable):
        q.take("carol", 1, 60, "y.0")
    assert q.charged("carol") == 0


def test_take_total_never_refills_and_is_shared(states):
    a, b = states().quotas, states().quotas
    assert a.take_total("private/m/1/dan", 8, 12, "1") is None
    assert b.take_total("private/m/1/dan", 5, 12, "2") == 8
    assert b.take_total("private/m/1/dan", 4, 12, "3") is None
    assert a.take_total("private/m/1/dan", 1, 12, "4") == 12


def test_in_flight_calls_of_a_dead_replica_stop_counting_when_its_lease_expires(
    states, monkeypatch
):
    """A missing lease is first noted, then its calls are dropped LEASE_GRACE_SECONDS later
    (time for a live worker whose lease expired during an outage to renew it)."""
    monkeypatch.setattr(rb, "LEASE_GRACE_SECONDS", 0.3)
    a, b = states(), states()
    assert a.quotas.acquire("erin", 1, "call-a") is None
    assert b.quotas.acquire("erin", 1, "call-b") == 1  # a's call is in flight
    a.client.delete(f"heml:lease:{a.lease}")  # what LEASE_SECONDS without renewal does
    assert b.quotas.acquire("erin", 1, "call-b") == 1  # noted missing: still counts
    time.sleep(0.4)
    assert b.quotas.acquire("erin", 1, "call-b") is None
    b.quotas.release("erin", "call-b")
    b.quotas.release("erin", "call-b")  # idempotent
    assert b.client.scard("heml:c:erin") == 0


def test_leases_expire_by_themselves(redis_url, monkeypatch):
    monkeypatch.setattr(rb, "LEASE_SECONDS", 1)
    a = rb.RedisState(redis_url, start=False)
    b = rb.RedisState(redis_url, start=False)
    try:
        assert a.quotas.acquire("fay", 1, "1") is None
        assert b.quotas.acquire("fay", 1, "2") == 1
        time.sleep(1.3)  # a stops renewing (a killed replica)
        b.sync()
        assert b.quotas.acquire("fay", 1, "2") == 1  # seen missing: the grace starts
        time.sleep(rb.LEASE_GRACE_SECONDS + 0.2)
        assert b.quotas.acquire("fay", 1, "2") is None
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------- bad data, outages
def test_malformed_values_read_back_fail_closed(states, caplog):
    state = states()
    c = state.client
    c.hset("heml:q:gus", mapping={"tokens": "nan", "stamp": "1"})
    assert state.quotas.take("gus", 1, 60, "1") is not None  # no credit, not a crash
    c.hset("heml:q:hal", mapping={"tokens": "1e300", "stamp": "-inf"})
    assert state.quotas.take("hal", 1, 60, "2") is not None
    c.hset("heml:q:ivy", "charged", "lots")
    with pytest.raises(StateUnavailable, match="malformed"):
        state.quotas.take("ivy", 1, 60, "3")
    c.hset("heml:t:private/m/1/ivy", "used", "-4")
    with pytest.raises(StateUnavailable, match="malformed"):
        state.quotas.take_total("private/m/1/ivy", 1, 60, "4")
    c.set("heml:c:jo", "not a set")
    with pytest.raises(StateUnavailable), caplog.at_level(logging.ERROR, "heml.server"):
        state.quotas.acquire("jo", 1, "5")
    assert "refused a acquire script" in caplog.text


def test_redis_down_fails_closed_logs_once_and_recovers(make_redis, caplog):
    server = make_redis(persist=True)
    state = rb.RedisState(server.url, start=False)
    try:
        assert state.quotas.take("kim", 2, 60, "a.0") is None
        server.halt()
        with caplog.at_level(logging.INFO, "heml.server"):
            for i in range(3):
                with pytest.raises(StateUnavailable, match="unreachable"):
                    state.quotas.take("kim", 2, 60, f"b.{i}")
            state.quotas.void(["b.0", "b.1", "b.2"])  # the failed calls: queued
            assert not state.sync()
        downs = [r for r in caplog.records if "is unreachable" in r.getMessage()]
        assert len(downs) == 1 and downs[0].levelname == "ERROR"
        server.start()
        with caplog.at_level(logging.INFO, "heml.server"):
            assert state.sync()  # pending voids sent
        assert any("answers again" in r.getMessage() for r in caplog.records)
        assert not state._pending
        assert state.quotas.charged("kim") == 2  # a.0 kept, b.* never charged
        assert state.quotas.take("kim", 2, 60, "c.0") is None
        assert state.quotas.charged("kim") == 4
    finally:
        state.close()


def test_state_urls_are_checked_with_the_remedy():
    assert check_state_url("embedded") is None and check_state_url(None) is None
    assert check_state_url("redis://h:6379/0") == "redis://h:6379/0"
    assert check_state_url("rediss://u:pw@h:6380/1").startswith("rediss://")
    for bad, why in (
        ("http://h", "redis://host:port/db"),
        ("redis://h:port/0", "bad port"),
        ("redis://h:6379/zero", "must be a number"),
    ):
        with pytest.raises(ValueError, match=why):
            check_state_url(bad)
    assert rb.safe_url("rediss://u:secret@h:6380/1") == "rediss://h:6380/1"


# ---------------------------------------------------------------------- model-privacy keys
def _served(name: str = "m", version: int = 1, budget_keys: int | None = None, per: int = 8):
    per_key = 2 * 8 * PARAMS.n * len(PARAMS.primes) * 3
    budget = (budget_keys or 170) * per_key
    store = PublicKeyStore(PARAMS, budget_bytes=budget, per_identity=per)
    return SimpleNamespace(
        private=SimpleNamespace(keys=store), model=SimpleNamespace(name=name, version=version)
    )


@pytest.fixture(scope="module")
def public_keys():
    sk = KeySet().get(PARAMS)
    out = []
    for i in range(8):
        nonce = bytes([i]) * KEY_NONCE_BYTES
        out.append((nonce, public_key_p0(sk, nonce)))
    return out


def test_a_key_registered_on_one_replica_is_used_on_another(states, public_keys):
    a, b = states(), states()
    on_a, on_b = a.private_keys(_served()), b.private_keys(_served())
    nonce, p0 = public_keys[0]
    key_id = on_a.register(nonce, p0, "key:alice")
    assert key_id not in on_b.local  # b never saw the registration...
    assert key_id in on_b  # ...but finds it in Redis, validates it and caches it
    assert on_b.local.encryptor(key_id) is not None
    assert on_b.take(key_id, 3, 4) is None and on_a.take(key_id, 2, 4) == 3  # one count
    assert "ab" * 32 not in on_b and "not-hex" not in on_b
    with pytest.raises(KeyError):
        on_b.take("ab" * 32, 1, 4)
    # another model's registry is another registry
    assert key_id not in b.private_keys(_served(name="other"))


def test_keys_are_validated_before_anything_reaches_redis(states, public_keys):
    state = states()
    keys = state.private_keys(_served())
    nonce, p0 = public_keys[0]
    for bad in (b"\x00" * len(p0), p0[:-7], b"\xff" * len(p0)):
        with pytest.raises(InvalidCiphertext):
            keys.register(nonce, bad, "peer:x")
    with pytest.raises(InvalidCiphertext):
        keys.register(b"short", p0, "peer:x")
    assert state.client.keys("heml:pk:*") == []


def test_malformed_key_bytes_in_redis_fail_closed(states, public_keys):
    a, b = states(), states()
    keys_a = a.private_keys(_served())
    nonce, p0 = public_keys[1]
    key_id = keys_a.register(nonce, p0, "peer:x")
    for corrupt in (b"\x00" * (KEY_NONCE_BYTES + len(p0)), nonce + p0[:-1], public_keys[2][0] + p0):
        a.client.hset("heml:pk:m:1:blob", key_id, corrupt)
        with pytest.raises(StateUnavailable, match="malformed public key"):
            key_id in b.private_keys(_served())  # noqa: B015
    assert key_id in keys_a  # the replica that validated it still has its own copy


def _replay(ops, registry, public_keys):
    """Run register/use operations; the ids each registry still holds."""
    ids = {}
    for op, i, who in ops:
        nonce, p0 = public_keys[i]
        if op == "reg":
            ids[i] = registry.register(nonce, p0, who)
        else:
            assert ids[i] in registry
    return {i for i, key_id in ids.items() if key_id in registry}


def test_eviction_order_in_redis_is_the_in_process_stores(states, public_keys):
    """Per-identity cap 2, capacity 4: the same operations leave the same keys."""
    ops = [
        ("reg", 0, "a"), ("reg", 1, "a"), ("reg", 2, "a"),  # a over its cap: 0 goes
        ("reg", 3, "b"), ("use", 1, "a"), ("reg", 4, "c"),  # full at 4 keys
        ("reg", 5, "d"),  # a holds most: its least recently used (2) goes
        ("reg", 6, "b"),  # b, c, d, a have 2,1,1,1: b's oldest (3) goes
        ("use", 4, "c"), ("reg", 7, "e"),  # ties of 1: the least recently active (a's 1)
    ]  # fmt: skip
    embedded = _replay(ops, _served(budget_keys=4, per=2).private.keys, public_keys)
    shared = _replay(ops, states().private_keys(_served(budget_keys=4, per=2)), public_keys)
    assert embedded == shared == {4, 5, 6, 7}


# ---------------------------------------------------------------------- API keys
def test_revocations_and_issued_keys_reach_every_replica(tmp_path, states, redis_url):
    path = tmp_path / "keys"
    alice = issue_key(path, "alice")
    bob = issue_key(path, "bob")
    a, b = states(api_keys=str(path)), states(api_keys=str(path))
    auth = [("authorization", f"Bearer {alice}")]
    assert a.keys.authenticate(auth).key_id == "alice"
    digest = next(k.digest for k in read_key_file(path) if k.key_id == "alice")
    assert rb.publish_revocation(redis_url, "alice", [digest])  # the file still has alice
    for s in (a, b):
        s.sync()
        with pytest.raises(AuthError):
            s.keys.authenticate(auth)
    assert b.keys.authenticate([("authorization", f"Bearer {bob}")]).key_id == "bob"
    # a key issued into Redis only
    other = tmp_path / "other"
    carol = issue_key(other, "carol", max_concurrent=2)
    rb.publish_key(redis_url, read_key_file(other)[0])
    a.sync()
    assert a.keys.authenticate([("authorization", f"Bearer {carol}")]).max_concurrent == 2
    # malformed entries read back are ignored (fail closed for them), not a crash
    a.client.hset("heml:apikeys", "mallory", '{"id": "mallory", "sha256": "zz"}')
    a.client.sadd("heml:apikeys:revoked", "junk")
    a.client.incr("heml:apikeys:version")
    a.sync()
    assert {k.key_id for k in a.keys.keys} == {"bob", "carol"}


def test_api_keys_fail_closed_when_revocations_cannot_be_checked(tmp_path, make_redis):
    path = tmp_path / "keys"
    key = issue_key(path, "alice")
    server = make_redis()
    state = rb.RedisState(server.url, api_keys=str(path), start=False)
    try:
        auth = [("authorization", f"Bearer {key}")]
        assert state.keys.authenticate(auth).key_id == "alice"
        server.halt()
        assert not state.sync()
        state.keys._synced -= rb.MAX_STALE_SECONDS  # what MAX_STALE_SECONDS of failures does
        with pytest.raises(StateUnavailable, match="revocations"):
            state.keys.authenticate(auth)
    finally:
        state.close()


def test_the_cli_refuses_a_bad_state_url_and_publishes_keys(tmp_path, redis_url, capsys):
    from heml.cli import main

    assert main(["serve", "--models", str(tmp_path), "--state", "http://h:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "redis://host:port/db" in err
    keys = tmp_path / "keys"
    assert (
        main(["keys", "issue", "--api-keys", str(keys), "--id", "zed", "--state", redis_url]) == 0
    )
    capsys.readouterr()
    client = Redis.client(SimpleNamespace(port=int(redis_url.rsplit(":", 1)[1].split("/")[0])))
    entry = json.loads(client.hget("heml:apikeys", "zed"))
    assert entry["sha256"] == read_key_file(keys)[0].digest.hex()
    assert (
        main(["keys", "revoke", "--api-keys", str(keys), "--id", "zed", "--state", redis_url]) == 0
    )
    assert "within 2 s" in capsys.readouterr().err
    assert client.hget("heml:apikeys", "zed") is None
    assert client.sismember("heml:apikeys:revoked", entry["sha256"])
    # Redis gone: nothing changes (no key in the file that nobody was shown), and the
    # error says to rerun
    assert main(["keys", "issue", "--api-keys", str(keys), "--id", "amy", "--state",
                 "redis://127.0.0.1:1/0"]) == 2  # fmt: skip
    err = capsys.readouterr()
    assert "nothing was changed" in err.err and err.out == ""
    assert [k.key_id for k in read_key_file(keys)] == []
    issue_key(keys, "bea")
    assert main(["keys", "revoke", "--api-keys", str(keys), "--id", "bea", "--state",
                 "redis://127.0.0.1:1/0"]) == 2  # fmt: skip
    assert [k.key_id for k in read_key_file(keys)] == ["bea"]  # a rerun can still revoke it


def test_a_stream_that_fails_keeps_the_charges_of_the_blocks_it_was_served(tmp_path, make_redis):
    """Redis goes away between two blocks of one PredictStream: the second block fails with
    UNAVAILABLE and is not charged; the first, answered, stays charged (only the failed
    block's charges are voided)."""
    import grpc

    from heml.he import wire
    from heml.info import LAYOUT_TO_PB
    from heml.v1 import heml_pb2 as pb
    from heml.v1 import heml_pb2_grpc

    from .guard_support import inprocess_server, linear_model

    models = tmp_path / "models"
    models.mkdir()
    linear_model(3, "small", 1).save(models / "small.json")
    keys = tmp_path / "keys"
    key = issue_key(keys, "streamer", predictions_per_minute=10**9)
    server = make_redis(persist=True)
    header = pb.PredictRequest(model="small", layout=LAYOUT_TO_PB["row"], n=1,
                               samples_per_ciphertext=1)  # fmt: skip
    blob = bytes(wire.ciphertext_size(2048))  # a ROW ciphertext (N = 2048) of zeros
    go = threading.Event()

    def requests():
        yield header
        yield pb.PredictRequest(ciphertexts=[blob])
        go.wait(30)
        yield header
        yield pb.PredictRequest(ciphertexts=[blob])

    try:
        with inprocess_server(models, api_keys=str(keys), state=server.url) as port:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = heml_pb2_grpc.InferenceStub(channel)
            replies = stub.PredictStream(
                requests(), metadata=[("authorization", f"Bearer {key}")], timeout=60
            )
            next(replies)  # block 1 answered
            client = server.client()
            first = int(client.hget("heml:q:streamer", "charged"))
            assert first > 0
            server.halt()
            go.set()
            with pytest.raises(grpc.RpcError) as info:
                next(replies)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            server.start()
            client = server.client()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the void is sent once Redis answers
                if any(client.get(k) == b"void" for k in client.keys("heml:charge:*")):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the failed block's charge was never voided")
            assert int(client.hget("heml:q:streamer", "charged")) == first
            channel.close()
    finally:
        server.stop()
