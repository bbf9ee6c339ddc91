"""Three `heml serve --state redis://…` replicas behind a real nginx, one real redis-server.

Each guarantee is shown beside its positive control: the same three replicas with the embedded
state (one count per replica, as on three hosts) break it; Redis keeps it.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import heml
from heml.errors import ResourceExhausted, ServerUnavailable, Unauthenticated
from heml.server.auth import issue_key
from heml.server.state.redis_backend import REVOCATION_SECONDS

from .cluster_support import Redis, Replica, balanced, require_binary

RNG = np.random.default_rng(1414)
D = 12
PRIVATE_QUOTA = 6  # the largest heml allows for this model (d = 12)


def test_redis_server_runs_on_loopback_only_and_stops():
    redis = Redis()
    try:
        assert redis.command("PING") == b"+PONG\r\n"
        assert redis.command("SET", "heml:probe", "1") == b"+OK\r\n"
        assert redis.command("CONFIG", "GET", "bind").endswith(b"$9\r\n127.0.0.1\r\n")
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    finally:
        redis.stop()
    assert redis.proc.returncode is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis.port), 1):
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Models (one default, one model-privacy) and API keys; each replica gets its own copy
    of the key file, as replicas on separate hosts would."""
    require_binary("nginx", "nginx")
    require_binary("redis-server", "redis-server")
    root = tmp_path_factory.mktemp("redis-cluster")
    X = RNG.normal(size=(400, D))
    y = (X[:, 0] - 0.5 * X[:, 1] > 0).astype(int)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    models = root / "models"
    models.mkdir()
    heml.export(clf, name="m", bounds=(-6.0, 6.0)).save(models / "m.json")
    heml.export(
        clf, name="secret", bounds=(-6.0, 6.0), model_privacy=True,
        max_predictions_per_key=PRIVATE_QUOTA,
    ).save(models / "secret.json")  # fmt: skip
    keys_file = root / "keys"
    keys = {
        "probe": issue_key(keys_file, "probe", predictions_per_minute=10**9),
        "meter": issue_key(keys_file, "meter", predictions_per_minute=10**9),
        "victim": issue_key(keys_file, "victim"),
        "private": issue_key(keys_file, "private"),
        "private2": issue_key(keys_file, "private2"),
    }
    return {"root": root, "models": models, "keys_file": keys_file, "keys": keys, "clf": clf}


def _key_copy(setup, name: str):
    path = setup["root"] / f"keys-{name}"
    shutil.copy(setup["keys_file"], path)
    path.chmod(0o600)
    return path


def _start_replicas(setup, tag: str, *extra: str) -> list[Replica]:
    """Three replicas, each with its own key-file copy. Started one after the other from this
    thread: a replica dies with the thread that started it (PR_SET_PDEATHSIG is per thread)."""
    out: list[Replica] = []
    try:
        for i in range(3):
            copy = _key_copy(setup, f"{tag}-{i}")
            out.append(Replica(setup["models"], None, "--api-keys", str(copy), *extra))
    except BaseException:
        for r in out:
            r.stop()
        raise
    return out


@pytest.fixture(scope="module")
def shared(setup):
    redis = Redis(persist=True)
    try:
        with balanced(lambda: _start_replicas(setup, "redis", "--state", redis.url)) as (
            replicas,
            nginx,
        ):
            yield redis, replicas, nginx
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def embedded(setup):
    """The positive control: the same replicas, each with its own (embedded) state."""
    with balanced(lambda: _start_replicas(setup, "embedded")) as pair:
        yield pair


def _slots_per_prediction(redis: Redis, target: str, key: str) -> int:
    """What one one-row prediction charges (the `probe` key's charged counter)."""
    before = int(redis.client().hget("heml:q:probe", "charged") or 0)
    with heml.Client(target, api_key=key, timeout=30) as c:
        c.model("m").decision_function(RNG.uniform(-3, 3, size=(1, D)))
    return int(redis.client().hget("heml:q:probe", "charged")) - before


def _drain_quota(target: str, key: str, clients: int = 16) -> tuple[int, list[BaseException]]:
    """`clients` threads, each with its own connection, predict one row at a time until
    refused; returns the number of successful predictions and any unexpected error."""
    ok = [0]
    lock = threading.Lock()
    unexpected: list[BaseException] = []
    start = threading.Barrier(clients)

    def run() -> None:
        try:
            with heml.Client(target, api_key=key, timeout=30, retries=0) as c:
                model = c.model("m")
                x = RNG.uniform(-3, 3, size=(1, D))
                start.wait(30)
                while True:
                    try:
                        model.decision_function(x)
                    except ResourceExhausted:
                        return
                    with lock:
                        ok[0] += 1
        except BaseException as exc:  # reported by the test
            unexpected.append(exc)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return ok[0], unexpected


def test_a_per_key_quota_holds_across_three_replicas_under_16_clients(setup, shared, embedded):
    redis, _replicas, nginx = shared
    slots = _slots_per_prediction(redis, nginx.target, setup["keys"]["probe"])
    assert slots >= 1
    fits = 5  # the quota covers this many one-row predictions
    quota = fits * slots
    # a new key issued into both key files' copies would need a restart: issue it into Redis
    # for the shared cluster, and into every embedded replica's own copy for the control
    extra = setup["root"] / "quota-key"
    key = issue_key(extra, "quota", predictions_per_minute=quota)
    from heml.server.auth import read_key_file
    from heml.server.state.redis_backend import publish_key

    publish_key(redis.url, read_key_file(extra)[0])
    control_replicas, control_nginx = embedded
    line = extra.read_text()
    for r in control_replicas:
        path = r.extra[1]
        with open(path, "a") as f:
            f.write(line)
    time.sleep(2.5)  # replicas reload key files every second, Redis keys every half second

    started = time.monotonic()
    got, unexpected = _drain_quota(control_nginx.target, key)
    assert not unexpected, unexpected[:3]
    assert got > fits + 1, f"control: per-replica counts should exceed the quota, got {got}"

    started = time.monotonic()
    got, unexpected = _drain_quota(nginx.target, key)
    elapsed = time.monotonic() - started
    assert not unexpected, unexpected[:3]
    refill = elapsed * quota / 60.0  # the bucket refills at quota/minute meanwhile
    assert fits <= got <= (quota + refill) // slots, (got, fits, elapsed)
    charged = int(redis.client().hget("heml:q:quota", "charged"))
    assert charged == got * slots  # refusals are not charged; every success exactly once


def _registers(replicas: list[Replica]) -> int:
    return sum(r.calls("RegisterKey", None) for r in replicas)


def _private_run(target: str, key: str, replicas: list[Replica]) -> tuple[int, int, list[int]]:
    """One SDK client predicts through the balancer until its model-privacy quota is used
    up; returns (successes, RegisterKey calls made, predictions per replica)."""
    regs = _registers(replicas)
    before = [r.calls("Predict") for r in replicas]
    ok = 0
    with heml.Client(target, api_key=key, timeout=30, retries=0) as c:
        model = c.model("secret")
        for _ in range(3 * PRIVATE_QUOTA + 3):
            try:
                model.decision_function(RNG.uniform(-3, 3, size=(1, D)))
            except ResourceExhausted:
                break
            ok += 1
    per = [r.calls("Predict") - b for r, b in zip(replicas, before, strict=True)]
    return ok, _registers(replicas) - regs, per


def test_a_privacy_key_registered_on_one_replica_is_used_on_all(setup, shared, embedded):
    redis, replicas, nginx = shared
    ok, registers, per = _private_run(nginx.target, setup["keys"]["private2"], replicas)
    assert registers == 1, "the key registered once is found by every replica"
    assert sum(1 for p in per if p > 0) >= 2, per
    used = int(redis.client().hget("heml:t:private/secret/1/private2", "used"))
    slots = used // ok
    assert ok >= 1 and used == ok * slots and used <= PRIVATE_QUOTA  # one allowance in all
    assert redis.client().hlen("heml:pk:secret:1:blob") == 1
    # control: replicas that do not share keys answer NOT_FOUND to a key registered on
    # another one, and the client registers again and again
    control_replicas, control_nginx = embedded
    ok, registers, per = _private_run(control_nginx.target, setup["keys"]["private"],
                                      control_replicas)  # fmt: skip
    assert registers > 1, (ok, registers, per)
    not_found = sum(r.calls("Predict", "NOT_FOUND") for r in control_replicas)
    assert not_found >= 1
    assert sum(r.calls("Predict", "NOT_FOUND") for r in replicas) == 0


def test_a_revocation_reaches_every_replica_within_the_stated_time(setup, shared, embedded):
    from heml.cli import main

    _redis, replicas, _nginx = shared
    key = setup["keys"]["victim"]

    def refused_everywhere(targets, within: float) -> float | None:
        clients = [heml.Client(t, api_key=key, timeout=10, retries=0) for t in targets]
        start = time.monotonic()
        try:
            pending = set(range(len(clients)))
            while pending and time.monotonic() - start < within:
                for i in list(pending):
                    try:
                        clients[i].models()
                    except Unauthenticated:
                        pending.discard(i)
                time.sleep(0.05)
            return None if pending else time.monotonic() - start
        finally:
            for c in clients:
                c.close()

    for group in (embedded[0], replicas):
        for r in group:
            with heml.Client(r.target, api_key=key, timeout=10, retries=0) as c:
                assert c.models()
    # control: on hosts with their own key files, revoking in one file reaches one replica
    control = embedded[0]
    assert main(["keys", "revoke", "--api-keys", control[0].extra[1], "--id", "victim"]) == 0
    assert refused_everywhere([control[0].target], REVOCATION_SECONDS + 1) is not None
    assert refused_everywhere([r.target for r in control[1:]], REVOCATION_SECONDS + 1) is None
    # shared: the same command with --state reaches every replica
    started = time.monotonic()
    args = ["keys", "revoke", "--api-keys", replicas[0].extra[1], "--id", "victim"]
    assert main([*args, "--state", _redis.url]) == 0
    took = refused_everywhere([r.target for r in replicas], REVOCATION_SECONDS + 3)
    assert took is not None, "a replica still accepts the revoked key"
    assert time.monotonic() - started <= REVOCATION_SECONDS + 0.5, took


def test_redis_stopped_and_restarted_under_load(setup, shared):
    """Calls fail with UNAVAILABLE while Redis is away, none is counted twice or lost, and
    the replicas (the same processes) serve again when it returns."""
    redis, replicas, nginx = shared
    pids = [r.proc.pid for r in replicas]
    slots = _slots_per_prediction(redis, nginx.target, setup["keys"]["probe"])
    key = setup["keys"]["meter"]
    client = redis.client()
    charged_before = int(client.hget("heml:q:meter", "charged") or 0)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with heml.Client(nginx.target, api_key=key, timeout=30, retries=0) as c:
            model = c.model("m")
            x = RNG.uniform(-3, 3, size=(1, D))
            while not stop.is_set():
                try:
                    model.decision_function(x)
                    what = "OK"
                except ServerUnavailable:
                    what = "UNAVAILABLE"
                except Exception as exc:  # reported by the asserts
                    what = repr(exc)
                with lock:
                    outcomes.append((time.monotonic(), what))
                if what != "OK":
                    time.sleep(0.02)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        redis.halt()
        down = time.monotonic()
        time.sleep(2.0)
        redis.start()
        up = time.monotonic()
        deadline = up + 20
        while time.monotonic() < deadline:
            with lock:
                if sum(1 for t, w in outcomes if t > up and w == "OK") >= 20:
                    break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    kinds = {w for _t, w in outcomes}
    assert kinds <= {"OK", "UNAVAILABLE"}, kinds
    assert any(w == "UNAVAILABLE" and down <= t for t, w in outcomes)
    assert sum(1 for t, w in outcomes if t > up and w == "OK") >= 20, "service did not resume"
    assert [r.proc.pid for r in replicas] == pids and all(r.proc.poll() is None for r in replicas)
    ok = sum(1 for _t, w in outcomes if w == "OK")
    time.sleep(2 * 0.5 + 0.5)  # pending voids are sent within a sync or two
    charged = int(client.hget("heml:q:meter", "charged")) - charged_before
    assert charged == ok * slots, (charged, ok, slots)  # none counted twice, none lost
    for r in replicas:
        log = "".join(r.lines)
        assert log.count("is unreachable") == 1, log[-2000:]
        assert "answers again" in log


@pytest.mark.slow
def test_a_killed_replicas_calls_in_flight_stop_counting_when_its_lease_expires(shared):
    """A key allowed one call at a time holds a call open on replica 0, which is SIGKILLed:
    replica 1 still counts that call (the limit is shared), and admits the key again once
    the dead replica's lease has expired and been seen missing for the grace period
    (LEASE_SECONDS + LEASE_GRACE_SECONDS), without anyone cleaning up."""
    import grpc

    from heml.server.auth import read_key_file
    from heml.server.state.redis_backend import (
        LEASE_GRACE_SECONDS,
        LEASE_SECONDS,
        SYNC_SECONDS,
        publish_key,
    )
    from heml.v1 import heml_pb2_grpc

    redis, replicas, _nginx = shared
    path = replicas[0].extra[1] + ".single"
    key = issue_key(path, "single", max_concurrent=1)
    publish_key(redis.url, read_key_file(path)[0])
    time.sleep(2 * SYNC_SECONDS + 0.5)
    metadata = [("authorization", f"Bearer {key}")]
    hold = threading.Event()

    def held():
        hold.wait(60)
        return
        yield

    channel = grpc.insecure_channel(replicas[0].target)
    stub = heml_pb2_grpc.InferenceStub(channel)
    call = stub.PredictStream(held(), metadata=metadata, timeout=60)
    other = heml_pb2_grpc.InferenceStub(grpc.insecure_channel(replicas[1].target))

    def admitted() -> bool:
        try:
            list(other.PredictStream(iter(()), metadata=metadata, timeout=10))
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise

    deadline = time.monotonic() + 10
    while admitted():  # until the held call is in flight on replica 0
        assert time.monotonic() < deadline, "the held call never counted"
        time.sleep(0.1)
    replicas[0].kill()
    killed = time.monotonic()
    try:
        assert not admitted(), "the dead replica's call should still count for a while"
        while not admitted():
            limit = LEASE_SECONDS + LEASE_GRACE_SECONDS + 5
            assert time.monotonic() - killed < limit, "in-flight count leaked"
            time.sleep(0.25)
        assert time.monotonic() - killed >= 1.0
    finally:
        hold.set()
        call.cancel()
        channel.close()
        replicas[0].start()
