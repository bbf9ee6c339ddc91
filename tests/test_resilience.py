"""Crash isolation, live model reload and graceful shutdown, against real server processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
from sklearn.linear_model import LogisticRegression

import heml

from .conftest import ServeProcess, assert_scores_close, free_port

RNG = np.random.default_rng(8)
D = 24


def _model(version: int, scale: float = 1.0) -> tuple[LogisticRegression, heml.LinearModel]:
    X = RNG.normal(size=(400, D))
    y = (X[:, 0] * scale + X[:, 1] > 0).astype(int)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    return clf, heml.export(clf, name="m", version=version, bounds=(-6.0, 6.0))


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_killing_a_worker_mid_request_loses_no_valid_request(tmp_path):
    clf, model = _model(1)
    model.save(tmp_path / "m.json")
    X = RNG.uniform(-3, 3, size=(20000, D))
    want = clf.decision_function(X)
    with heml.serve(tmp_path, port=0, workers=2) as server:
        before = server.current_worker_pids()
        assert len(before) == 2
        calls, errors = [], []  # (thread, started, finished, scores)
        stop = threading.Event()

        def run(i: int) -> None:
            # back-to-back calls, so some are in flight whenever the worker dies, however
            # fast scoring is on this machine
            try:
                with heml.Client(f"localhost:{server.port}", timeout=120) as c:
                    m = c.model("m")
                    while not stop.is_set():
                        started = time.monotonic()
                        scores = m.decision_function(X)
                        calls.append((i, started, time.monotonic(), scores))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # mid-flight
        killed_at = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        # every client finishes a call that began after the kill: all of them go on working
        assert _wait(lambda: {i for i, s, _e, _r in calls if s > killed_at} == {0, 1, 2}, 120)
        stop.set()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert any(s < killed_at < e for _i, s, e, _r in calls)  # some call spanned the kill
        for *_, got in calls:
            assert_scores_close(got, want)
        # the supervisor notices the death and forks a replacement
        assert _wait(
            lambda: (
                before[0] not in server.current_worker_pids()
                and len(server.current_worker_pids()) == 2
            )
        )
        with heml.Client(f"localhost:{server.port}") as c:  # and it keeps serving
            assert_scores_close(c.model("m").decision_function(X[:10]), want[:10])


def test_models_are_added_replaced_and_kept_on_corruption_without_restart(tmp_path):
    clf1, m1 = _model(1)
    m1.save(tmp_path / "m.json")
    X = RNG.uniform(-3, 3, size=(50, D))
    with (
        heml.serve(tmp_path, port=0, workers=2, reload_seconds=0.3) as server,
        heml.Client(f"localhost:{server.port}") as c,
    ):
        assert c.model("m").info.version == 1
        clf2, m2 = _model(2, scale=-1.0)
        m2.save(tmp_path / "m-v2.json")  # a new version beside the old one
        assert _wait(lambda: c.model("m").info.version == 2)
        assert_scores_close(c.model("m").decision_function(X), clf2.decision_function(X))
        assert_scores_close(c.model("m", 1).decision_function(X), clf1.decision_function(X))
        # a corrupt replacement is rejected: version 2 keeps serving
        (tmp_path / "m-v2.json").write_text('{"schema": "heml.linear-model", "coef": [')
        time.sleep(1.5)
        assert c.model("m").info.version == 2
        assert_scores_close(c.model("m").decision_function(X), clf2.decision_function(X))
        # a brand-new model appears too
        _clf3, m3 = _model(1, scale=2.0)
        m3.name = "other"
        m3.save(tmp_path / "other.json")
        assert _wait(lambda: any(i.name == "other" for i in c.models()))
        # fixing the file swaps in its new content atomically
        _clf4, m4 = _model(3)
        m4.save(tmp_path / "m-v2.json")
        assert _wait(lambda: c.model("m").info.version == 3)


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path):
    # a wide model: one stream (at most 32 blocks of 4096 samples) then takes seconds even on a
    # quiet machine, so SIGTERM surely comes while it is in flight
    wide = 256
    Xw = RNG.normal(size=(400, wide))
    clf = LogisticRegression(max_iter=500).fit(Xw, (Xw[:, 0] + Xw[:, 1] > 0).astype(int))
    heml.export(clf, name="m", bounds=(-6.0, 6.0)).save(tmp_path / "m.json")
    port = free_port()
    # a 3 s drain: the health probe below shares two busy cores with the scoring client
    server = ServeProcess("--models", str(tmp_path), "--port", str(port), "--drain-seconds", "3")
    proc = server.proc
    try:
        X = RNG.uniform(-3, 3, size=(32 * 4096, wide))
        out: dict = {}

        started = threading.Event()

        def long_call():
            with heml.Client(f"127.0.0.1:{port}", retries=0) as c:
                m = c.model("m")
                t0 = time.monotonic()
                m.decision_function(X[:20000])  # keys, connection, and this machine's rate
                rate = 20000 / (time.monotonic() - t0)
                n = int(min(len(X), max(20000, 4 * rate)))  # about four seconds of work
                # one RPC: a call of more blocks is several streams, and a draining server
                # rightly refuses the ones that start after SIGTERM (retries=0 here)
                while len(m._codec.blocks(n)) > heml.client.BLOCKS_PER_STREAM:
                    n = n * 3 // 4
                started.set()
                out["scores"] = m.decision_function(X[:n])
                out["n"] = n
                out["finished"] = time.monotonic()

        t = threading.Thread(target=long_call)
        t.start()
        assert started.wait(60)
        time.sleep(0.3)  # the long stream is now in flight
        terminated_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        statuses = set()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    statuses.add(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        continue  # a slow answer on saturated cores says nothing; ask again
                    break
                if health_pb2.HealthCheckResponse.NOT_SERVING in statuses:
                    break
                time.sleep(0.05)
        t.join(120)
        assert proc.wait(60) == 0
        assert "scores" in out, "the in-flight request was lost"
        assert out["finished"] > terminated_at  # it really was in flight when SIGTERM came
        assert_scores_close(out["scores"], clf.decision_function(X[: out["n"]]))
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_exit_when_the_supervisor_is_killed(tmp_path):
    """SIGKILL of the supervisor alone (no process group kill): its workers must not keep
    serving on the port with nobody to replace or stop them."""
    import socket

    _clf, model = _model(1)
    model.save(tmp_path / "m.json")
    port = free_port()
    server = ServeProcess("--models", str(tmp_path), "--port", str(port), "--workers", "2")
    with heml.Client(f"127.0.0.1:{port}") as c:
        assert len(c.models()) == 1
    server.proc.kill()  # the supervisor only
    server.proc.wait(10)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as probe:  # no SO_REUSEPORT: conflicts with any listener
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, "a worker still holds the port"
                time.sleep(0.1)
