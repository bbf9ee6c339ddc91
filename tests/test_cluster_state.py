"""The Redis state backend (heml.server.state.redis_backend) against a real redis-server.

Two RedisState objects stand for two replicas (each is what one worker process holds); the
embedded backend, one per replica, is the positive control that shows what sharing fixes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

import heml
from heml.errors import InvalidCiphertext
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.private import KEY_NONCE_BYTES, PublicKeyStore, default_privacy_params
from heml.server.auth import AuthError, issue_key, read_key_file
from heml.server.quota import QuotaTable
from heml.server.state import EmbeddedQuotas, StateDataLost, StateUnavailable, check_state_url
from heml.server.state import redis_backend as rb

from .cluster_support import Redis
from .guard_support import linear_model

PARAMS = default_privacy_params()


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


# ---------------------------------------------------------------------- breaks found by review
# An adversarial review confirmed each break below against a real redis-server; each test
# failed on the code before its fix (branch redis at 51e0955) and passes after it.


def _auth(key: str):
    return [("authorization", f"Bearer {key}")]


# ---------------------------------------------------------------------- 1. revocations
def test_a_revocation_survives_a_redis_that_lost_its_data(tmp_path):
    """docs/security.md: 'every replica refuses a revoked key within 2 s whatever its own key
    file says'. The revocation lives only in Redis; a Redis that comes back empty (no AOF, or
    the shipped k8s Redis on an emptyDir after a reschedule, or a failover to a lagging copy)
    silently lifts it: replicas whose key file still holds the key accept it again. Expected:
    still refused (or UNAVAILABLE: fail closed). Observed: accepted."""
    from heml.cli import main

    from .guard_support import inprocess_server, linear_model

    models = tmp_path / "models"
    models.mkdir()
    linear_model(3, "small", 1).save(models / "small.json")
    operator = tmp_path / "operator-keys"  # the file `heml keys revoke` edits
    victim = issue_key(operator, "victim")
    replica_file = tmp_path / "replica-keys"  # replica B's own copy (a k8s Secret, say)
    shutil.copy(operator, replica_file)
    replica_file.chmod(0o600)
    redis = Redis()  # as deploy/k8s/redis.yaml after a reschedule: starts empty
    try:
        with inprocess_server(models, api_keys=str(replica_file), state=redis.url) as port:
            from heml.v1 import heml_pb2 as pb
            from heml.v1 import heml_pb2_grpc

            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = heml_pb2_grpc.InferenceStub(channel)

            def status() -> grpc.StatusCode:
                try:
                    stub.ListModels(pb.ListModelsRequest(), metadata=_auth(victim), timeout=10)
                    return grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    return exc.code()

            assert status() == grpc.StatusCode.OK  # control: the key works
            argv = ["keys", "revoke", "--api-keys", str(operator), "--id", "victim"]
            assert main([*argv, "--state", redis.url]) == 0
            time.sleep(rb.REVOCATION_SECONDS + 0.5)
            assert status() == grpc.StatusCode.UNAUTHENTICATED  # control: revoked everywhere
            redis.halt()
            redis.start()  # Redis back, without its data
            time.sleep(rb.REVOCATION_SECONDS + 0.5)  # the replica has synced again
            after = status()
            channel.close()
        assert after != grpc.StatusCode.OK, "a revoked API key is accepted again"
    finally:
        redis.stop()


# ---------------------------------------------------------------------- 2. tampered key entry
def _deep_entry() -> str:
    return "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not ValueError


def test_a_malformed_api_key_entry_in_redis_does_not_crash_a_worker(tmp_path):
    """docs/security.md: values read back are 'parsed like key-file lines' and a malformed one
    'fails closed', 'not a crash'. A deeply nested JSON entry in heml:apikeys raises
    RecursionError (not ApiKeyFileError/ValueError): RedisState() raises it, so a worker
    cannot start while it is in Redis."""
    keys = tmp_path / "keys"
    issue_key(keys, "alice")
    redis = Redis()
    try:
        client = redis.client()
        client.hset("heml:apikeys", "evil", _deep_entry())
        client.incr("heml:apikeys:version")
        state = None
        try:
            state = rb.RedisState(redis.url, api_keys=str(keys), start=False)
        except RecursionError:
            pytest.fail("a malformed heml:apikeys entry crashes the worker at start")
        finally:
            if state is not None:
                state.close()
    finally:
        redis.stop()


def test_a_malformed_api_key_entry_does_not_stop_the_sync_thread_for_good(tmp_path):
    """The same entry written while the server runs kills the worker's sync thread (sync()
    catches only redis errors): API keys are never refreshed again, so every authenticated
    call fails UNAVAILABLE even after the entry is removed, until the server is restarted
    (docs/deploy.md: 'Nothing restarts: the next call after Redis returns works'); the lease
    is no longer renewed and pending voids are never sent."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")
    redis = Redis()
    state = rb.RedisState(redis.url, api_keys=str(keys))
    try:
        assert state.keys.authenticate(_auth(alice)).key_id == "alice"  # control
        client = redis.client()
        client.hset("heml:apikeys", "evil", _deep_entry())
        client.incr("heml:apikeys:version")
        time.sleep(3 * rb.SYNC_SECONDS)
        client.hdel("heml:apikeys", "evil")  # the operator cleans up
        client.incr("heml:apikeys:version")
        time.sleep(rb.MAX_STALE_SECONDS + 1.0)
        assert state._thread.is_alive(), "the worker's state thread died"
        assert state.keys.authenticate(_auth(alice)).key_id == "alice"
    finally:
        state.close()
        redis.stop()


# ---------------------------------------------------------------------- 3. in-flight counts
def test_calls_in_flight_through_an_outage_longer_than_a_lease_still_count(monkeypatch):
    """An outage of Redis longer than LEASE_SECONDS (10 s; 1 s here) lets every lease expire
    while its worker is alive and its admitted calls keep computing (they need no Redis). When
    Redis is back (AOF: the counts are kept), the first acquire on another replica, before the
    first replica's next sync (≤ 0.5 s), drops the live call: max_concurrent = 1 admits two
    concurrent calls. Expected: the second acquire is refused (or fails closed)."""
    monkeypatch.setattr(rb, "LEASE_SECONDS", 1)
    redis = Redis(persist=True)
    a = rb.RedisState(redis.url, start=False)
    b = rb.RedisState(redis.url, start=False)
    try:
        assert a.quotas.acquire("erin", 1, "long-call") is None  # a's call runs
        assert b.quotas.acquire("erin", 1, "b-call") == 1  # control: it counts
        redis.halt()
        time.sleep(rb.LEASE_SECONDS + 0.5)  # outage longer than a lease; a's call still runs
        redis.start()
        second = b.quotas.acquire("erin", 1, "b-call-2")  # a client's retry, right away
        assert second is not None, "two calls in flight for a key with max_concurrent=1"
    finally:
        a.close()
        b.close()
        redis.stop()


# ---------------------------------------------------------------------- 4. registry memory
def test_the_key_registry_of_a_version_no_longer_served_is_freed_in_redis(tmp_path):
    """docs/deploy.md: the Redis registry has 'the same limits as in one process' (about 170
    keys / 64 MiB per model). In one process a model version's key store goes with the
    version when a new file replaces it; in Redis heml:pk:<model>:<version>:* is never
    deleted nor given a TTL, so every retired version keeps up to 64 MiB in Redis for ever
    (unbounded across hot reloads)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import heml
    from heml.he.encrypt import public_key_p0
    from heml.he.keys import KeySet
    from heml.he.private import KEY_NONCE_BYTES
    from heml.server.registry import ModelNotServed, Registry

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    models = tmp_path / "models"
    models.mkdir()

    def save(version: int) -> None:
        heml.export(clf, name="secret", bounds=(-6.0, 6.0), model_privacy=True,
                    version=version).save(models / "secret.json")  # fmt: skip

    save(1)
    registry, errors = Registry.from_folder(models)
    assert not errors
    redis = Redis()
    state = rb.RedisState(redis.url, start=False)
    try:
        served = registry.get("secret", 1)
        sk = KeySet().get(served.private.keys.params)
        nonce = b"\x01" * KEY_NONCE_BYTES
        state.private_keys(served).register(nonce, public_key_p0(sk, nonce), "key:alice")
        client = redis.client()
        assert client.hlen("heml:pk:secret:1:blob") == 1  # control: kept while served
        save(2)
        time.sleep(0.05)
        registry.refresh()
        with pytest.raises(ModelNotServed):
            registry.get("secret", 1)  # version 1 is gone from every replica
        leftover = client.keys("heml:pk:secret:1:*")
        assert leftover == [], f"a retired version's registry stays in Redis: {leftover}"
    finally:
        state.close()
        redis.stop()


# ---------------------------------------------------------------------- 5. recovery
def test_api_keys_stay_fresh_while_the_voids_of_an_outage_are_sent(tmp_path):
    """docs/deploy.md: 'Nothing restarts: the next call after Redis returns works.' The voids
    that an outage leaves behind (one per call that failed UNAVAILABLE, up to MAX_PENDING =
    100,000) are sent one round trip at a time by the thread that also keeps API keys fresh;
    while it sends them, keys go stale (> MAX_STALE_SECONDS) and every authenticated call on
    the worker fails UNAVAILABLE although Redis answers (100,000 voids: ~7 s flush, UNAVAILABLE
    from 2 s on, on the 2-core review machine)."""
    from heml.server.state import StateUnavailable

    key = issue_key(tmp_path / "keys", "alice", predictions_per_minute=10**9)
    redis = Redis()
    state = rb.RedisState(redis.url, api_keys=str(tmp_path / "keys"), start=False)
    try:
        for i in range(rb.MAX_PENDING):
            state.defer("void", rb._charge_key(f"outage-call-{i}.0"))
        assert state.keys.authenticate(_auth(key)).key_id == "alice"  # control
        import threading

        flush = threading.Thread(target=state.sync)  # Redis answers again
        flush.start()
        refused = 0
        while flush.is_alive():
            try:
                state.keys.authenticate(_auth(key))
            except StateUnavailable:
                refused += 1
            time.sleep(0.02)
        flush.join()
        assert refused == 0, f"{refused} authenticated calls refused while Redis answered"
        assert not state._pending  # the whole backlog was sent
        assert redis.client().get(rb._charge_key("outage-call-99999.0")) == b"void"
    finally:
        state.close()
        redis.stop()


# ---------------------------------------------------------------------- 6. registry scripts
def test_an_inconsistent_registry_in_redis_fails_closed_instead_of_hanging_redis(tmp_path):
    """docs/security.md: heml 'fails closed on anything malformed' it reads from Redis. The
    REGISTER script evicts with `while ZCARD(own:<identity>) > per do drop(oldest) end`, and
    drop() removes a key from that zset only when heml:pk:…:owner still names it. An own:
    zset that lists keys the owner hash does not (a value written by hand, an operator who
    deleted the owner hash, or Redis' maxmemory allkeys-* eviction of one of the two keys)
    makes the script loop for ever: Redis answers BUSY to every client of every replica, and
    SCRIPT KILL cannot stop a script that has written, so only SHUTDOWN NOSAVE ends it.
    Expected: the registration fails closed (UNAVAILABLE) and Redis keeps answering."""
    from types import SimpleNamespace

    import redis as redis_py

    from heml.he.encrypt import public_key_p0
    from heml.he.keys import KeySet
    from heml.he.private import KEY_NONCE_BYTES, PublicKeyStore, default_privacy_params
    from heml.server.state import StateUnavailable

    params = default_privacy_params()
    store = PublicKeyStore(params, budget_bytes=1 << 30, per_identity=8)
    served = SimpleNamespace(
        private=SimpleNamespace(keys=store), model=SimpleNamespace(name="m", version=1)
    )
    sk = KeySet().get(params)
    nonce = b"\x05" * KEY_NONCE_BYTES
    p0 = public_key_p0(sk, nonce)
    redis = Redis()
    state = rb.RedisState(redis.url, start=False)
    probe = redis_py.Redis(host="127.0.0.1", port=redis.port, socket_timeout=2)
    try:
        # control: a consistent registry registers and evicts normally
        state.private_keys(served).register(nonce, p0, "key:alice")
        assert probe.ping()
        # the owner hash lost (evicted, deleted), the identity's zset kept, 8 entries
        probe.delete("heml:pk:m:1:owner")
        probe.zadd("heml:pk:m:1:own:key:mallory", {f"{i:064x}": i for i in range(8)})
        fresh = PublicKeyStore(params, budget_bytes=1 << 30, per_identity=8)  # no local copy
        other = SimpleNamespace(private=SimpleNamespace(keys=fresh), model=served.model)
        with pytest.raises(StateUnavailable):
            state.private_keys(other).register(nonce, p0, "key:mallory")
        try:
            answered = probe.ping()
        except redis_py.RedisError as exc:  # BUSY: a script is still running
            answered = exc
        assert answered is True, f"Redis no longer answers: {answered}"
        # the inconsistent entries were dropped: the registration goes through when retried
        state.private_keys(other).register(nonce, p0, "key:mallory")
        assert probe.zcard("heml:pk:m:1:own:key:mallory") == 1
    finally:
        state.close()
        probe.close()
        if redis.proc is not None:
            redis.proc.kill()  # its pid (a busy Redis ignores SIGTERM)
            redis.proc.wait(10)
        redis.stop()


# ---------------------------------------------------------------------- 7. leaked slots
_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1e6
local now = start
while now - start < tonumber(ARGV[1]) do
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
return 1
"""  # keeps Redis busy for ARGV[1] s without writing (DEBUG SLEEP is disabled)


def test_a_deadline_that_passes_during_acquire_does_not_leak_the_slot(tmp_path):
    """Guard.enter registers the termination callback (which runs Guard.exit) before the
    acquire script. When Redis answers later than the client's deadline (0.6 s here: a slow
    fsync, an AOF rewrite, a busy script; socket timeout is 1 s), the callback runs exit
    first: nothing acquired, nothing released, exit marked done. The acquire then succeeds and
    the handler's own exit is a no-op, so the slot is never released; the worker renews its
    lease, so it never expires. max_concurrent = 1: the key is refused (RESOURCE_EXHAUSTED)
    until the worker restarts. Embedded has the same order, but its acquire takes
    microseconds; over Redis the window is the round trip."""
    from heml.v1 import heml_pb2 as pb
    from heml.v1 import heml_pb2_grpc

    from .guard_support import inprocess_server, linear_model

    (tmp_path / "models").mkdir()
    linear_model(3, "small", 1).save(tmp_path / "models" / "small.json")
    key = issue_key(tmp_path / "keys", "alice", max_concurrent=1)
    redis = Redis()
    try:
        with inprocess_server(
            tmp_path / "models", api_keys=str(tmp_path / "keys"), state=redis.url
        ) as port:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = heml_pb2_grpc.InferenceStub(channel)

            def status(timeout: float = 10) -> grpc.StatusCode:
                try:
                    stub.ListModels(pb.ListModelsRequest(), metadata=_auth(key), timeout=timeout)
                    return grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    return exc.code()

            assert [status(), status()] == [grpc.StatusCode.OK] * 2  # control: released
            import threading

            slow = threading.Thread(target=lambda: redis.client().eval(_BUSY, 0, "0.6"))
            slow.start()
            time.sleep(0.05)
            assert status(0.2) == grpc.StatusCode.DEADLINE_EXCEEDED
            slow.join()
            time.sleep(1.0)  # Redis answers again; the worker has synced
            after = status()
            channel.close()
        assert after == grpc.StatusCode.OK, f"the key's only slot leaked: {after.name}"
    finally:
        redis.stop()


# ---------------------------------------------------------------------- guards added with the fixes
def test_model_privacy_scoring_is_refused_after_redis_lost_its_data(make_redis):
    """A worker that saw Redis' data marker and finds it gone marks the loss in Redis: the
    lifetime allowances (which keep a model secret) may have restarted from zero, so every
    replica, including one started after the loss, refuses them with FAILED_PRECONDITION until
    the operator deletes heml:lost. Registration still works."""
    from heml.server.state import StateDataLost
    from heml.server.status import status_for

    server = make_redis()
    a = rb.RedisState(server.url, start=False)
    try:
        assert a.quotas.take_total("private/m/1/kay", 2, 10, "1") is None  # control
        server.halt()
        server.start()  # back without its data (no append-only file)
        with pytest.raises(StateUnavailable, match="changed"):  # before a's next sync
            a.quotas.take_total("private/m/1/kay", 2, 10, "2")
        assert a.sync()  # detects the loss
        assert server.client().exists(rb.LOST)
        with pytest.raises(StateDataLost, match="heml:lost") as info:
            a.quotas.take_total("private/m/1/kay", 2, 10, "2")
        assert status_for(info.value)[0] == grpc.StatusCode.FAILED_PRECONDITION
        late = rb.RedisState(server.url, start=False)  # a replica started after the loss
        try:
            with pytest.raises(StateDataLost):
                late.quotas.take_total("private/m/1/kay", 2, 10, "3")
        finally:
            late.close()
        server.client().delete(rb.LOST)  # the operator accepts the reset
        assert a.quotas.take_total("private/m/1/kay", 2, 10, "4") is None
        a.sync()
        assert not server.client().exists(rb.LOST)  # not raised again: the marker is agreed
    finally:
        a.close()


def test_a_replica_started_on_an_empty_redis_does_not_report_a_loss(states, redis_url):
    """The first worker to find Redis empty writes the data marker; others adopt it."""
    a, b = states(), states()
    client = a.client
    assert client.get(rb.EPOCH) is not None and a._epoch == b._epoch
    assert not client.exists(rb.LOST)
    assert a.quotas.take_total("private/m/1/lee", 1, 10, "1") is None


def test_revocations_deleted_from_redis_are_written_back(tmp_path, states):
    """Revocations are monotonic: one removed from Redis by hand (or evicted), without a
    version change, is written back by the next sync of a worker that saw it."""
    keys = tmp_path / "keys"
    key = issue_key(keys, "mia")
    a = states(api_keys=str(keys))
    assert a.keys.authenticate(_auth(key)).key_id == "mia"  # control
    assert rb.publish_revocation(a.url, "mia", rb.key_file_digests(str(keys), "mia"))
    a.sync()
    with pytest.raises(AuthError):
        a.keys.authenticate(_auth(key))
    digest = rb.key_file_digests(str(keys), "mia")[0].hex()
    a.client.srem(rb.REVOKED, digest)  # no version change
    a.sync()
    assert a.client.sismember(rb.REVOKED, digest)
    with pytest.raises(AuthError):
        a.keys.authenticate(_auth(key))


def test_calls_in_flight_are_put_back_after_redis_lost_its_data(make_redis):
    server = make_redis()
    a = rb.RedisState(server.url, start=False)
    b = rb.RedisState(server.url, start=False)
    try:
        assert a.quotas.acquire("nia", 1, "running") is None
        server.halt()
        server.start()  # empty
        assert a.sync()
        assert b.quotas.acquire("nia", 1, "other") == 1  # a's call counts again
        a.quotas.release("nia", "running")
        assert b.quotas.acquire("nia", 1, "other") is None
    finally:
        a.close()
        b.close()


def test_a_dropped_release_does_not_hold_a_slot(make_redis, monkeypatch, caplog):
    """The queue of releases waiting for Redis is bounded; a release that does not fit is
    dropped (logged with the count), and the worker moves its running calls to a new lease so
    the dropped one stops counting after the grace."""
    monkeypatch.setattr(rb, "MAX_PENDING", 1)
    monkeypatch.setattr(rb, "LEASE_GRACE_SECONDS", 0.3)
    server = make_redis(persist=True)
    a = rb.RedisState(server.url, start=False)
    b = rb.RedisState(server.url, start=False)
    try:
        assert a.quotas.acquire("ola", 2, "running") is None
        assert a.quotas.acquire("ola", 2, "ended") is None
        a.defer("void", rb._charge_key("x.0"))  # the queue is full
        server.halt()
        a.quotas.release("ola", "ended")  # cannot be sent, cannot be queued
        server.start()
        with caplog.at_level(logging.ERROR, "heml.server"):
            assert a.sync()
        assert any("1 voids/releases were dropped" in r.getMessage() for r in caplog.records)
        assert b.quotas.acquire("ola", 2, "new") == 2  # old lease seen missing: grace
        time.sleep(0.4)
        assert b.quotas.acquire("ola", 2, "new") is None  # only "running" counts now
        a.quotas.release("ola", "running")
        b.quotas.release("ola", "new")
        assert b.client.scard("heml:c:ola") == 0
    finally:
        a.close()
        b.close()


def test_a_redis_that_refuses_writes_is_one_outage_in_the_log(states, caplog):
    """OOM (maxmemory reached under noeviction) is an outage: UNAVAILABLE, one ERROR line for
    all the calls, one line when it accepts writes again."""
    a = states()
    a.client.config_set("maxmemory", "1")
    try:
        with caplog.at_level(logging.INFO, "heml.server"):
            for i in range(5):
                with pytest.raises(StateUnavailable, match="refuses"):
                    a.quotas.take("pia", 1, 60, f"{i}.0")
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "OutOfMemoryError" in errors[0].getMessage()
    finally:
        a.client.config_set("maxmemory", "0")
    assert a.quotas.take("pia", 1, 60, "ok.0") is None


def test_registries_expire_after_their_last_use(states, public_keys):
    a = states()
    nonce, p0 = public_keys[0]
    a.private_keys(_served()).register(nonce, p0, "key:quin")
    for name in ("blob", "owner", "used", "idents", "tick", "own:key:quin"):
        ttl = a.client.ttl(f"heml:pk:m:1:{name}")
        if name == "used":
            continue  # created by the first charge
        assert 0 < ttl <= rb.REGISTRY_TTL, name


def test_the_state_url_can_come_from_the_environment(monkeypatch):
    """`--state env`: the URL (and a password in it) stays out of argv and `ps`."""
    monkeypatch.setenv("HEML_STATE_URL", "rediss://u:secret@h:6380/1")
    assert check_state_url("env") == "rediss://u:secret@h:6380/1"
    monkeypatch.delenv("HEML_STATE_URL")
    with pytest.raises(ValueError, match="export HEML_STATE_URL="):
        check_state_url("env")


def test_a_worker_started_while_redis_is_down_serves_once_it_starts(tmp_path, make_redis):
    """Fail closed at start, then serve without a restart (from the review: holds)."""
    keys = tmp_path / "keys"
    key = issue_key(keys, "rae")
    server = make_redis()
    server.halt()
    state = rb.RedisState(server.url, api_keys=str(keys), start=False)
    try:
        with pytest.raises(StateUnavailable):
            state.keys.authenticate(_auth(key))
        server.start()
        assert state.sync()
        assert state.keys.authenticate(_auth(key)).key_id == "rae"
    finally:
        state.close()


def test_a_call_that_ends_while_its_slot_is_acquired_releases_it_embedded(tmp_path):
    """The same order as over Redis, with the embedded table: the call's end (the gRPC
    termination callback) runs while acquire is in progress; the slot is released."""
    from heml.server.interceptor import Guard
    from heml.server.requestlog import CallRecord

    table = QuotaTable.create(tmp_path / "quota", workers=1)
    quotas = EmbeddedQuotas(table, 0)
    key = SimpleNamespace(key_id="sam", max_concurrent=1)

    class EndsDuringAcquire(EmbeddedQuotas):
        def acquire(self, key_id, limit, call_id):
            got = super().acquire(key_id, limit, call_id)
            guard.exit("terminated")  # the deadline passes now
            return got

    class Context:  # the parts of grpc.ServicerContext the guard uses
        def add_callback(self, cb):
            return True

        def peer(self):
            return "ipv4:127.0.0.1:1"

        def abort(self, code, message):
            raise RuntimeError(code)

        def code(self):
            return grpc.StatusCode.DEADLINE_EXCEEDED

    policy = SimpleNamespace(
        quotas=EndsDuringAcquire(table, 0),
        metrics=SimpleNamespace(request=lambda *a: None, rejected=lambda *a: None),
    )
    guard = Guard(policy, CallRecord(method="m"), key, None)
    with pytest.raises(RuntimeError):
        guard.enter(Context())
    guard.exit("raised")
    assert quotas.acquire("sam", 1, "next") is None, "the slot leaked"
    table.close()


def test_api_key_entries_are_bounded_and_any_parse_error_refuses_only_that_entry(
    tmp_path, states, caplog
):
    """Entries longer than MAX_ENTRY_CHARS are refused unparsed; a shorter one nested deep
    enough for json to raise RecursionError is refused too; the valid keys still work and
    each bad entry is logged once, not at every reload."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")
    a = states(api_keys=str(keys))
    client = a.client
    client.hset(rb.APIKEYS, "long", " " * (rb.MAX_ENTRY_CHARS + 1))
    client.hset(rb.APIKEYS, "deep", "[" * 2000 + "]" * 2000)  # 4,000 characters
    with caplog.at_level(logging.ERROR, "heml.server"):
        for _ in range(2):
            client.incr(rb.APIKEYS_VERSION)
            assert a.sync()
    assert a.keys.authenticate(_auth(alice)).key_id == "alice"
    logged = [r.getMessage() for r in caplog.records if "ignoring API key" in r.getMessage()]
    assert len(logged) == 2, logged
    assert any("'long'" in m and "above" in m for m in logged)


def test_the_state_thread_survives_any_exception(tmp_path, make_redis, monkeypatch, caplog):
    """Whatever a sync raises, the thread logs it and keeps renewing (a dead thread would
    leave API keys stale for good: every call UNAVAILABLE until a restart)."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")
    server = make_redis()
    state = rb.RedisState(server.url, api_keys=str(keys))
    try:
        refresh = state.keys.refresh
        calls = []

        def failing(*args, **kw):
            calls.append(1)
            if len(calls) <= 2:
                raise RuntimeError("injected")
            return refresh(*args, **kw)

        monkeypatch.setattr(state.keys, "refresh", failing)
        with caplog.at_level(logging.ERROR, "heml.server"):
            time.sleep(4 * rb.SYNC_SECONDS)
        assert state._thread.is_alive()
        assert len(calls) > 2
        assert state.keys.authenticate(_auth(alice)).key_id == "alice"
        assert sum("injected" in r.getMessage() for r in caplog.records) == 1  # logged once
    finally:
        state.close()


# ---------------------------------------------------------------------- second review
# A second adversarial review confirmed each break below against a real redis-server or a
# real ``heml.serve`` process; each test failed on the code before its fix (branch rfix2 at
# 7494ca8) and passes after it.


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


# ---------------------------------------------------------------------- 1. an older copy
def test_an_older_copy_of_redis_is_not_seen_as_a_loss_and_allowances_are_spent_twice(
    make_redis,
):
    """docs/deploy.md 'When Redis loses its data' lists 'a failover to a copy that lacks the
    last writes' and 'an empty (or older) Redis' among the losses the data marker detects. The
    marker heml:epoch is written once and never changes, so an older copy (a lagging replica
    promoted, a backup restored, an RDB snapshot reloaded) carries the same marker: the loss is
    not seen and the model-privacy allowance written after the copy is spent again.

    Control: the same worker facing an emptied Redis refuses the allowance (detection works)."""
    # positive control: an empty Redis is detected
    empty = make_redis()
    a = rb.RedisState(empty.url, start=False)
    try:
        assert a.quotas.take_total("private/m/1/kay", 6, 10, "c1") is None
        empty.halt()
        empty.start()  # no persistence: empty
        a.sync()
        with pytest.raises((StateDataLost, StateUnavailable)):
            a.quotas.take_total("private/m/1/kay", 6, 10, "c2")
    finally:
        a.close()

    # the attack: Redis comes back as an older copy of itself (RDB snapshot taken earlier)
    older = make_redis()
    b = rb.RedisState(older.url, start=False)
    try:
        assert b.quotas.take_total("private/m/1/kay", 2, 10, "o1") is None  # used 2
        assert older.client().save()  # the copy: dump.rdb holds used=2 and the marker
        assert b.quotas.take_total("private/m/1/kay", 6, 10, "o2") is None  # used 8
        assert b.quotas.take_total("private/m/1/kay", 6, 10, "o3") == 8  # control: refused
        older.halt()  # --save "": no snapshot at shutdown, dump.rdb stays the older copy
        older.start()  # loads dump.rdb: the older copy (as a lagging replica promoted)
        assert int(older.client().hget(rb.PREFIX + "t:private/m/1/kay", "used")) == 2
        b.sync()
        assert older.client().exists(rb.LOST), "the sync did not see the older copy"
        # expected: the loss is detected (refused); observed: granted, 14 of a lifetime 10
        with pytest.raises((StateDataLost, StateUnavailable)):
            granted = b.quotas.take_total("private/m/1/kay", 6, 10, "o4")
            pytest.fail(f"older copy not detected: 6 more slots granted ({granted}), 14 > 10")
    finally:
        b.close()


def test_an_older_copy_is_refused_by_the_allowance_script_before_the_next_sync(make_redis):
    """The allowance script compares the generation itself: a charge made in the half second
    between an older copy's return and the worker's next sync is refused, and marks the loss.
    Control: before the copy is reloaded, the same charge is granted."""
    server = make_redis()
    w = rb.RedisState(server.url, start=False)
    try:
        assert w.quotas.take_total("private/m/1/kay", 2, 10, "g1") is None
        assert server.client().save()
        assert w.quotas.take_total("private/m/1/kay", 2, 10, "g2") is None  # control
        server.halt()
        server.start()  # the older copy (generation 1, the worker saw 2); no sync
        with pytest.raises(StateDataLost):
            w.quotas.take_total("private/m/1/kay", 2, 10, "g3")
        assert server.client().exists(rb.LOST)
    finally:
        w.close()


def test_a_replica_started_right_after_a_loss_spends_zeroed_allowances(make_redis):
    """docs/deploy.md: 'the script compares the marker with the one the worker last saw, so no
    zeroed count is spent in the half second before detection'. A worker started in that half
    second (a replica rescheduled with its Redis, a worker restarted by the supervisor) makes
    first contact: it writes a new marker without raising heml:lost and adopts it, so its
    allowance charges pass the marker check against the zeroed counts.

    Control: the worker that ran before the loss is refused in the same window."""
    server = make_redis()
    old = rb.RedisState(server.url, start=False)
    new = None
    try:
        assert old.quotas.take_total("private/m/1/kay", 8, 10, "a1") is None  # used 8 of 10
        server.halt()
        server.start()  # back empty; old has not synced yet
        with pytest.raises(StateUnavailable):  # control: the old worker is refused
            old.quotas.take_total("private/m/1/kay", 8, 10, "a2")
        new = rb.RedisState(server.url, start=False)  # started before old's next sync
        with pytest.raises((StateDataLost, StateUnavailable)):
            granted = new.quotas.take_total("private/m/1/kay", 8, 10, "n1")
            pytest.fail(f"zeroed allowance spent: 8 more granted ({granted}), 16 of 10")
    finally:
        old.close()
        if new is not None:
            new.close()


# ---------------------------------------------------------------------- 2. a stalled worker
def test_a_worker_whose_sync_stalled_past_its_lease_puts_its_running_calls_back(
    make_redis, monkeypatch
):
    """A worker whose state thread does not run for LEASE_SECONDS + grace (a process paused
    by SIGSTOP or a frozen VM, a thread starved of the GIL) without ever seeing a Redis error:
    another replica's acquire drops its running calls (as if it were dead). When it syncs
    again it renews the same lease, but put-back (reassert) runs only after an error or a
    data loss, so its call still running never counts again: max_concurrent=1 admits a second
    call while the first still runs, for the rest of that call's life.

    Control: after an outage the worker *saw* (Redis stopped), the same call is put back."""
    monkeypatch.setattr(rb, "LEASE_GRACE_SECONDS", 0.2)
    server = make_redis(persist=True)
    a = rb.RedisState(server.url, start=False)
    b = rb.RedisState(server.url, start=False)
    lease_a = rb.PREFIX + "lease:" + a.lease
    try:
        # control: a seen outage -> put back
        assert a.quotas.acquire("kim", 1, "long-1") is None
        server.halt()
        assert not a.sync()  # a sees the outage
        server.start()
        server.client().delete(lease_a)  # its lease expired meanwhile
        assert b.quotas.acquire("kim", 1, "x") == 1  # marks a's lease missing
        time.sleep(0.3)
        assert b.quotas.acquire("kim", 1, "x") is None  # a looks dead: its call dropped
        b.quotas.release("kim", "x")
        assert a.sync()
        assert b.quotas.acquire("kim", 1, "y") == 1  # control: a's running call counts again
        a.quotas.release("kim", "long-1")

        # the stall: a's lease expires with no error seen by a (its thread did not run)
        assert a.quotas.acquire("kim", 1, "long-2") is None
        server.client().delete(lease_a)  # what Redis does after LEASE_SECONDS without renewal
        assert b.quotas.acquire("kim", 1, "p") == 1
        time.sleep(0.3)
        assert b.quotas.acquire("kim", 1, "p") is None  # a looks dead (inherent to leases)
        b.quotas.release("kim", "p")
        assert a.sync()  # a runs again: lease renewed; long-2 still running on a
        # expected: long-2 counts again; observed: a second call is admitted
        assert b.quotas.acquire("kim", 1, "q") == 1, (
            "a's running call was not put back: max_concurrent=1 admits a second call"
        )
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------- 3. the URL in argv
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_state_env_keeps_the_redis_password_out_of_ps_with_heml_serve(
    tmp_path, make_redis, monkeypatch
):
    """``--state env`` exists so that a password in the Redis URL is not shown by ``ps``
    (heml/server/state/__init__.py, docs/deploy.md). ``heml.serve(..., state="env")`` resolves
    the variable in ServerConfig and passes the whole config, URL and password included, as
    JSON on the supervisor's command line: any local user reads it in /proc/<pid>/cmdline.

    Control: the command line is readable and holds the config (the models folder)."""
    server = make_redis()
    secret = "s3cretRedisPassw0rd"
    monkeypatch.setenv("HEML_STATE_URL", f"redis://:{secret}@127.0.0.1:{server.port}/0")
    models = tmp_path / "models"
    models.mkdir()
    linear_model(3, "m", 1).save(models / "m.json")
    with heml.serve(models, workers=1, state="env") as handle:
        cmdline = _cmdline(handle.pid)
        assert str(models.resolve()) in cmdline  # control: we read the supervisor's argv
        assert secret not in cmdline, "the Redis password is in the supervisor's argv (ps)"
    # the config itself keeps "env" (what a supervisor, a worker or a log sees), resolved only
    # by the process that connects
    from heml.server.options import ServerConfig

    config = ServerConfig(models_dir=str(models), state="env")
    assert config.to_dict()["state"] == "env" and secret in config.state_url


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_state_url_given_to_heml_serve_reaches_the_workers_by_environment(tmp_path, make_redis):
    """``heml.serve(..., state=URL)`` hands the URL to its supervisor through the environment,
    not its command line. Control: the workers reach that Redis (they write its data marker)."""
    server = make_redis()
    url = f"redis://127.0.0.1:{server.port}/0"
    models = tmp_path / "models"
    models.mkdir()
    linear_model(3, "m", 1).save(models / "m.json")
    with heml.serve(models, workers=1, state=url) as handle:
        cmdline = _cmdline(handle.pid)
        assert str(models.resolve()) in cmdline and '"state": "env"' in cmdline
        assert f":{server.port}" not in cmdline, "the state URL is in the supervisor's argv"
        deadline = time.monotonic() + 10
        while not server.client().exists(rb.EPOCH):  # control: a worker connected
            assert time.monotonic() < deadline, "no worker reached Redis"
            time.sleep(0.1)


# ---------------------------------------------------------------------- 4. registry expiry
def test_an_idle_identitys_keys_escape_the_per_identity_cap_and_eviction(
    make_redis, public_keys, monkeypatch
):
    """REGISTER/TOUCH refresh the TTL of the *caller's* zset ``own:<identity>`` but refresh
    ``owner``/``blob``/``used``/``idents`` for every caller. An identity idle for REGISTRY_TTL
    (7 days; 1 s here) while others keep the model in use loses its zset and keeps its keys in
    ``owner``: those keys no longer count towards its per-identity cap and are never chosen
    for eviction (eviction walks the zsets). The identity registers again and holds more than
    its cap; repeated, idle identities' keys fill the capacity for good, and every new key is
    evicted at once.

    Control: the in-process store (the documented 'same limits as in one process') given the
    same operations keeps the identity at its cap."""
    monkeypatch.setattr(rb, "REGISTRY_TTL", 1)
    ids = {}

    def run(registry, pause: bool):
        for i in (0, 1):
            ids[i] = registry.register(*public_keys[i], "peer:x")
        ids[2] = registry.register(*public_keys[2], "peer:y")
        if pause:  # y keeps the model in use while x is idle longer than the TTL
            end = time.monotonic() + 1.8
            while time.monotonic() < end:
                assert ids[2] in registry
                time.sleep(0.2)
        for i in (3, 4):
            ids[i] = registry.register(*public_keys[i], "peer:x")
        return {i for i, key_id in ids.items() if key_id in registry}

    embedded = run(_served(budget_keys=4, per=2).private.keys, pause=False)
    assert embedded == {2, 3, 4}  # control: x holds its cap (2), its oldest keys went

    server = make_redis()
    state = rb.RedisState(server.url, start=False)
    try:
        shared = run(state.private_keys(_served(budget_keys=4, per=2)), pause=True)
        owners = state.client.hgetall("heml:pk:m:1:owner")
        held_by_x = sum(1 for v in owners.values() if v == b"peer:x")
        assert shared == embedded, (
            f"Redis registry holds {sorted(shared)}; peer:x owns {held_by_x} keys with a "
            "per-identity cap of 2"
        )
    finally:
        state.close()


def test_a_zset_created_later_joins_its_registrys_expiry(states, public_keys, monkeypatch):
    """A new identity's zset made between two renewals of the registry gets the time the
    registry has left (not no expiry at all, which would outlive the registry for good)."""
    monkeypatch.setattr(rb, "REGISTRY_TTL", 1000)
    a = states()
    registry = a.private_keys(_served())
    registry.register(*public_keys[0], "key:una")
    registry.register(*public_keys[1], "key:dos")  # within a tenth of the TTL: no renewal
    left = a.client.pttl("heml:pk:m:1:tick")
    assert 0 < a.client.pttl("heml:pk:m:1:own:key:dos") <= left + 50
    assert 0 < a.client.pttl("heml:pk:m:1:own:key:una") <= left + 50


# ---------------------------------------------------------------------- 5. URL errors
def test_a_bad_state_url_error_does_not_show_part_of_the_password(monkeypatch):
    """A generated password (base64) often holds '/', which ends the netloc unless encoded:
    ``redis://default:Zm9vYmFy/cXV4@redis:6379/0`` parses as host 'default', port 'Zm9vYmFy'.
    The error then prints that port, the first part of the password, to the terminal and the
    orchestrator's log, for a URL that --state env was meant to keep secret.

    Control: the same check refuses a harmless URL with a bad port (the error is produced,
    saying what is wrong and the expected shape, quoting no part of the URL)."""
    from heml.server.state import check_state_url

    monkeypatch.setenv("HEML_STATE_URL", "redis://127.0.0.1:notaport/0")
    with pytest.raises(ValueError, match="bad port.*percent-encode") as info:
        check_state_url("env")  # control
    assert "notaport" not in str(info.value)
    monkeypatch.setenv("HEML_STATE_URL", "redis://default:Zm9vYmFy/cXV4@redis:6379/0")
    with pytest.raises(ValueError) as info:
        check_state_url("env")
    assert "Zm9vYmFy" not in str(info.value), f"password shown: {info.value}"
