"""The SDK reaching several replicas itself: ``h1:p1,h2:p2`` and ``dns:///`` targets.

Three real `heml serve` replicas on loopback, no balancer in between (needs no nginx).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import heml
from heml._targets import RECONNECT, ROUND_ROBIN, channel_target

from .cluster_support import Replica, ScoringLoad
from .conftest import assert_scores_close

RNG = np.random.default_rng(41)
D = 10


@pytest.fixture(scope="module")
def fitted():
    X = RNG.normal(size=(400, D))
    y = (X[:, 2] + X[:, 3] > 0).astype(int)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    return clf, heml.export(clf, name="m", bounds=(-6.0, 6.0))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, fitted):
    models = tmp_path_factory.mktemp("client-cluster-models")
    fitted[1].save(models / "m.json")
    started: list[Replica] = []
    try:
        started.extend(Replica(models) for _ in range(3))
        yield started
    finally:
        for r in started:
            r.stop()


def _delta(replicas, before):
    return [r.calls() - b for r, b in zip(replicas, before, strict=True)]


def _warm(model, x, replicas) -> None:
    """Call until every replica answered once: round robin only picks replicas whose
    connection is up, and a new channel connects to them one by one."""
    before = [r.calls() for r in replicas]
    deadline = time.monotonic() + 10
    while min(_delta(replicas, before)) == 0 and time.monotonic() < deadline:
        model.decision_function(x)


# ---------------------------------------------------------------------- parsing
def test_a_list_of_ip_literals_becomes_one_multi_address_target():
    target, options = channel_target("127.0.0.1:5001, 127.0.0.2:5002")
    assert target == "ipv4:127.0.0.1:5001,127.0.0.2:5002"
    assert ("grpc.service_config", ROUND_ROBIN) in options
    six, _ = channel_target("[::1]:5001,[::1]:5002")
    assert six == "ipv6:[::1]:5001,[::1]:5002"


def test_dns_targets_get_round_robin_and_single_targets_stay_as_they_are():
    assert channel_target("dns:///heml.example:50051") == (
        "dns:///heml.example:50051",
        [("grpc.service_config", ROUND_ROBIN), RECONNECT],
    )
    assert channel_target("localhost:50051") == ("localhost:50051", [])
    native = "ipv4:127.0.0.1:5001,127.0.0.1:5002"  # gRPC's own list syntax is kept
    assert channel_target(native) == (native, [("grpc.service_config", ROUND_ROBIN), RECONNECT])


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1:1,",  # empty entry
        "127.0.0.1:1,127.0.0.1:",  # an empty port (an entry without one gets 50051)
        "127.0.0.1:1,127.0.0.1:99999",  # port out of range
        "127.0.0.1:1,dns:///x:2",  # a scheme inside a list
        "127.0.0.1:1,[::1]:2",  # two families: gRPC's ipv4:/ipv6: lists take one
        "127.0.0.1:1,heml-no-such-host.invalid:2",  # does not resolve
    ],
)
def test_malformed_lists_are_refused_with_the_form_to_use(bad):
    with pytest.raises(ValueError, match="target|resolve"):
        heml.Client(bad)


# ---------------------------------------------------------------------- real replicas
def test_a_list_target_spreads_calls_over_every_replica(replicas, fitted):
    clf = fitted[0]
    x = RNG.uniform(-3, 3, size=(2, D))
    target = ",".join(r.target for r in replicas)
    with heml.Client(target, timeout=30) as client:
        model = client.model("m")
        _warm(model, x, replicas)
        before = [r.calls() for r in replicas]
        for _ in range(30):
            assert_scores_close(model.decision_function(x), clf.decision_function(x))
    delta = _delta(replicas, before)
    assert sum(delta) == 30 and min(delta) >= 8, delta
    # the control: one replica's address alone is one connection, so one replica
    before = [r.calls() for r in replicas]
    with heml.Client(replicas[0].target, timeout=30) as client:
        model = client.model("m")
        for _ in range(6):
            model.decision_function(x)
    assert _delta(replicas, before) == [6, 0, 0]


def test_host_names_in_a_list_are_resolved(replicas, fitted):
    if "127.0.0.1" not in {i[4][0] for i in socket.getaddrinfo("localhost", None)}:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    x = RNG.uniform(-3, 3, size=(3, D))
    before = [r.calls() for r in replicas]
    target = ",".join(f"localhost:{r.port}" for r in replicas)
    with heml.Client(target, timeout=30) as client:
        model = client.model("m")
        assert_scores_close(model.decision_function(x), fitted[0].decision_function(x))
        _warm(model, x, replicas)  # fails below unless every listed name was reached
    assert min(_delta(replicas, before)) >= 1


def test_a_dns_target_reaches_the_replica(replicas, fitted):
    x = RNG.uniform(-3, 3, size=(3, D))
    with heml.Client(f"dns:///127.0.0.1:{replicas[2].port}", timeout=30) as client:
        scores = client.model("m").decision_function(x)
    assert_scores_close(scores, fitted[0].decision_function(x))


def test_killing_a_listed_replica_under_load_loses_no_call(replicas, fitted):
    """Round robin skips the dead replica; the SDK retries its in-flight calls elsewhere."""
    clf = fitted[0]
    X = RNG.uniform(-3, 3, size=(8, D))
    want = clf.decision_function(X)
    load = ScoringLoad(",".join(r.target for r in replicas), X, want)
    ok, errors, clients = load.ok, load.errors, load.clients
    killed: list[Replica] = []
    try:
        # a kill that hits no call in flight tests nothing: kill again (one replica down at a
        # time, each brought back before the next kill) until a client had to retry; on a
        # loaded machine the first kills can fall between calls
        for attempt in range(6):
            victim = replicas[attempt % len(replicas)]
            time.sleep(1.0)
            killed_at = time.monotonic()
            victim.kill()
            if victim not in killed:
                killed.append(victim)
            time.sleep(1.5)
            assert not errors, errors
            assert sum(t > killed_at for t in ok) > 0, "no call finished after the kill"
            victim.start()  # back on its port (a fresh process counts from zero)
            if sum(c.retried for c in clients):
                break
        deadline = time.monotonic() + 20
        while min(v.calls() for v in killed) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert min(v.calls() for v in killed) > 0, "a restarted replica got no calls back"
    finally:
        load.stop()
    assert not errors, errors
    # the control: calls did fail (UNAVAILABLE) when the replica died; none reached the
    # caller because the SDK retried them on another replica
    assert sum(c.retried for c in clients) > 0, "no kill hit a call in flight"
