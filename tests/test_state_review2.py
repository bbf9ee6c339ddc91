"""Second adversarial review of ``--state redis://``: failing tests for confirmed breaks.

Each test runs against a real redis-server on loopback (tests/cluster_support.py) or a real
``heml.serve`` process; each has a positive control showing the mechanism under test works in
the case the fix covered, then the case it misses.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import heml
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.private import KEY_NONCE_BYTES, PublicKeyStore, default_privacy_params
from heml.server.state import StateDataLost, StateUnavailable
from heml.server.state import redis_backend as rb

from .cluster_support import Redis
from .guard_support import linear_model


@pytest.fixture
def make_redis():
    """redis-servers of a test's own, stopped at teardown whatever the test raised."""
    made: list[Redis] = []

    def make(persist: bool = False) -> Redis:
        made.append(Redis(persist=persist))
        return made[-1]

    yield make
    for server in made:
        server.stop()


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
        # expected: the loss is detected (refused); observed: granted, 14 of a lifetime 10
        with pytest.raises((StateDataLost, StateUnavailable)):
            granted = b.quotas.take_total("private/m/1/kay", 6, 10, "o4")
            pytest.fail(f"older copy not detected: 6 more slots granted ({granted}), 14 > 10")
    finally:
        b.close()


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


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


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


# ---------------------------------------------------------------------- registry TTL
PARAMS = default_privacy_params()


@pytest.fixture(scope="module")
def public_keys():
    sk = KeySet().get(PARAMS)
    out = []
    for i in range(6):
        nonce = bytes([i]) * KEY_NONCE_BYTES
        out.append((nonce, public_key_p0(sk, nonce)))
    return out


def _served(budget_keys: int, per: int):
    per_key = 2 * 8 * PARAMS.n * len(PARAMS.primes) * 3
    store = PublicKeyStore(PARAMS, budget_bytes=budget_keys * per_key, per_identity=per)
    return SimpleNamespace(
        private=SimpleNamespace(keys=store), model=SimpleNamespace(name="m", version=1)
    )


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
