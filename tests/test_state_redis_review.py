"""Adversarial review of `heml serve --state redis://…` (branch redis at 51e0955).

Each test documents a break that was confirmed against a real redis-server: it FAILS on the
reviewed code and passes once the break is fixed. Positive controls are inside the tests
(the same assertion holds before the fault is injected). Repro scripts: attacks/.
"""

from __future__ import annotations

import shutil
import time

import grpc
import pytest

from heml.server.auth import issue_key
from heml.server.state import redis_backend as rb

from .cluster_support import Redis


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
    from 2 s on, on the 2-core review machine). attacks/void_backlog.py prints the figures."""
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
