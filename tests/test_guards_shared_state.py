"""The interceptor's hooks into shared state (``--state redis://``), in this process (issue 18;
docs/deploy.md "Shared state", docs/security.md "Quotas", docs/model-privacy.md).

What the Redis backend promises through the interceptor: every replica sees the model-privacy
keys registered on another (and one count for them); each charge of a call has an id of its
own, so a call's charges are all counted (a repeated id is taken for a retry and counted
once); a call answered UNAVAILABLE has the charges of its block undone, so it costs nothing.

Two in-process servers (tests/guard_support.py) stand for two replicas, one real redis-server
on loopback; replies are real ciphertexts from the SDK's codec.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import heml
from heml.he.private import PRIVATE
from heml.info import LAYOUT_TO_PB
from heml.server.auth import issue_key
from heml.v1 import heml_pb2_grpc

from .cluster_support import Redis
from .guard_support import inprocess_server

D = 30
QUOTA = 12  # max_predictions_per_key (below the d = 30 estimate, 18.9)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared-state-models")
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(120, D))
    clf = LogisticRegression().fit(X, (X[:, 0] - X[:, 1] > 0).astype(int))
    heml.export(
        clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True, max_predictions_per_key=QUOTA
    ).save(folder / "secret.json")
    return folder


@pytest.fixture()
def redis(redis_server):
    redis_server.client().flushall()
    return redis_server


def _request(model, n: int):
    """A PRIVATE block of n zero rows under the model's registered key (SDK codec)."""
    codec = model._codec
    (block,) = codec.blocks(n)
    cts = codec.encrypt(np.zeros((n, D)), block)
    request = model._header(block, len(cts))
    request.ciphertexts.extend(cts)
    assert request.layout == LAYOUT_TO_PB[PRIVATE] and request.key_id
    return request


def _stub(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, heml_pb2_grpc.InferenceStub(channel)


def _quota_message(used: int, requested: int) -> str:
    return (
        f"model-privacy quota of {QUOTA} predictions per key is used up ({used} used, "
        f"{requested} requested): d+1 exact answers would reveal the model"
    )


def test_a_key_registered_on_one_replica_scores_and_counts_on_another(folder, redis):
    """RegisterKey on replica A; replica B (same Redis) knows the key and shares its count."""
    with (
        inprocess_server(folder, state=redis.url) as a,
        inprocess_server(folder, state=redis.url) as b,
        heml.Client(f"127.0.0.1:{a}") as client,
    ):
        model = client.model("secret")
        key_id = model._register_key()
        assert redis.client().exists("heml:pk:secret:1:owner")
        channel, stub_b = _stub(b)
        try:
            assert stub_b.Predict(_request(model, 8), timeout=30).n == 8  # known on B
            with pytest.raises(grpc.RpcError) as info:  # 8 used on B, 5 more on A: over 12
                client._stub.Predict(_request(model, 5), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == _quota_message(8, 5)
        finally:
            channel.close()
        assert model._key_id == key_id


@contextlib.contextmanager
def _alice_registered(folder, redis, tmp_path):
    """A server on Redis state with API key alice (no rate limit to speak of), her client and
    its model-privacy key registered: yields (client, model, the bearer metadata)."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", predictions_per_minute=10**6)
    with (
        inprocess_server(folder, state=redis.url, api_keys=str(keys)) as port,
        heml.Client(f"127.0.0.1:{port}", api_key=alice) as client,
    ):
        model = client.model("secret")
        model._register_key()
        yield client, model, (("authorization", f"Bearer {alice}"),)


def test_every_charge_of_a_streamed_call_counts_once(folder, redis, tmp_path):
    """A stream of two blocks under an API key charges the rate bucket and the model-privacy
    allowance once per block: four charges with four ids, all counted."""
    with _alice_registered(folder, redis, tmp_path) as (client, model, bearer):
        replies = client._stub.PredictStream(
            iter([_request(model, 2), _request(model, 1)]), timeout=30, metadata=bearer
        )
        assert [r.n for r in replies] == [2, 1]
        used = redis.client().hget("heml:t:private/secret/1/alice", "used")
        assert int(used) == 3
        assert int(redis.client().hget("heml:q:alice", "charged")) > 0
        with pytest.raises(grpc.RpcError) as info:
            client._stub.Predict(_request(model, 10), timeout=30, metadata=bearer)
        assert info.value.details() == _quota_message(3, 10)


def test_a_call_answered_unavailable_costs_nothing(folder, redis, tmp_path):
    """The model-privacy allowance's record is unusable (wrong type in Redis): the call is
    UNAVAILABLE, and the rate charge its block already made is undone."""
    with _alice_registered(folder, redis, tmp_path) as (client, model, bearer):
        r = redis.client()
        r.rpush("heml:t:private/secret/1/alice", "not a hash")
        with pytest.raises(grpc.RpcError) as info:
            client._stub.Predict(_request(model, 2), timeout=30, metadata=bearer)
        assert info.value.code() == UNAVAILABLE, info.value.details()
        assert int(r.hget("heml:q:alice", "charged") or 0) == 0  # the rate charge voided
        # positive control: the same call with a usable record is charged
        r.delete("heml:t:private/secret/1/alice")
        assert client._stub.Predict(_request(model, 2), timeout=30, metadata=bearer).n == 2
        assert int(r.hget("heml:q:alice", "charged")) > 0


class _ReplyDroppingProxy:
    """A TCP relay to Redis that, while ``marker`` is set, passes on any command containing it
    and then cuts the connection without its reply: a charge Redis made whose answer was
    lost (the case the charge ids and ``void`` exist for)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.marker: bytes | None = None
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream), 5)
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, cut), daemon=True).start()

    def _up(self, client, upstream, cut) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                marker = self.marker
                if marker is not None and marker in data:
                    cut.set()  # the reply to this command never reaches the client
                    upstream.sendall(data)
                    self.dropped += 1
                    time.sleep(0.2)  # Redis runs it
                    break
                upstream.sendall(data)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _down(self, upstream, client, cut) -> None:
        with contextlib.suppress(OSError):
            while (data := upstream.recv(65536)) and not cut.is_set():
                client.sendall(data)

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def test_a_charge_whose_reply_was_lost_is_voided_with_the_call(folder, redis):
    """Without API keys the model-privacy allowance lives with the registered key in Redis.
    Redis makes the charge but its reply is lost (twice: the retry is taken for the same
    charge): the call is UNAVAILABLE and its charge is voided by its id, so the key's
    allowance is untouched. Positive control: the same call through a working link is
    charged."""
    proxy = _ReplyDroppingProxy(redis.port)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    r = redis.client()
    try:
        with (
            inprocess_server(folder, state=url) as port,
            heml.Client(f"127.0.0.1:{port}") as client,
        ):
            model = client.model("secret")
            key_id = model._register_key()
            proxy.marker = b"heml:pk:secret:1:used"
            with pytest.raises(grpc.RpcError) as info:
                client._stub.Predict(_request(model, 3), timeout=30)
            proxy.marker = None
            assert info.value.code() == UNAVAILABLE, info.value.details()
            assert proxy.dropped >= 1
            time.sleep(0.3)
            assert int(r.hget("heml:pk:secret:1:used", key_id) or 0) == 0
            assert client._stub.Predict(_request(model, 3), timeout=30).n == 3
            assert int(r.hget("heml:pk:secret:1:used", key_id)) == 3
    finally:
        proxy.close()


def test_a_version_no_longer_served_frees_its_key_registry_in_redis(folder, redis, tmp_path):
    """The registry of a model-privacy version lives in Redis while the version is served;
    when its file is removed, the replica deletes it (the retire hook the state installs)."""
    import shutil

    from heml.server.registry import Registry

    shutil.copy(folder / "secret.json", tmp_path / "secret.json")
    registry, _errors = Registry.from_folder(tmp_path)
    r = redis.client()
    with (
        inprocess_server(tmp_path, registry, state=redis.url) as port,
        heml.Client(f"127.0.0.1:{port}") as client,
    ):
        client.model("secret")._register_key()
        assert r.exists("heml:pk:secret:1:owner") and r.exists("heml:pk:secret:1:blob")
        registry.refresh()  # unchanged: still served, still registered
        assert r.exists("heml:pk:secret:1:owner")
        (tmp_path / "secret.json").unlink()
        registry.refresh()
        assert [k for k in r.keys("heml:pk:secret:1:*")] == []


def test_unusable_quota_records_fail_closed_with_unavailable(folder, redis, tmp_path):
    """A key's rate bucket or in-flight set that Redis holds in a form heml cannot use is not
    skipped: the call is UNAVAILABLE with the state's reason (fail closed, docs/deploy.md),
    and the same call is served once the records are usable."""
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice", predictions_per_minute=10**6, max_concurrent=2)
    bearer = (("authorization", f"Bearer {alice}"),)
    r = redis.client()
    with (
        inprocess_server(folder, state=redis.url, api_keys=str(keys)) as port,
        heml.Client(f"127.0.0.1:{port}", api_key=alice) as client,
    ):
        model = client.model("secret")
        model._register_key()
        for record, script in (("heml:q:alice", "take"), ("heml:c:alice", "acquire")):
            r.delete("heml:q:alice", "heml:c:alice")
            r.rpush(record, "not", "usable") if script == "take" else r.set(record, "x")
            with pytest.raises(grpc.RpcError) as info:
                client._stub.Predict(_request(model, 1), timeout=30, metadata=bearer)
            assert info.value.code() == UNAVAILABLE, (script, info.value.details())
            assert info.value.details() == (
                f"shared state at redis://127.0.0.1:{redis.port}/0 holds data heml cannot use "
                f"({script}); see the server log"
            )
        r.delete("heml:q:alice", "heml:c:alice")
        assert client._stub.Predict(_request(model, 1), timeout=30, metadata=bearer).n == 1


def test_while_redis_is_unreachable_api_keys_fail_closed(folder, tmp_path, monkeypatch):
    """Revocations live in Redis: once it has not answered for MAX_STALE_SECONDS, a call with
    a valid key is UNAVAILABLE (a revoked key must not get in meanwhile); a call without a key
    is still UNAUTHENTICATED; when Redis is back, the key is accepted again.

    The worker's intervals are shortened (polled every 0.1 s, stale after 1 s; the server's are
    0.5 s and 2 s) so the test waits 1.3 s instead of 2.5 s: it is in the selection of every
    interceptor, servicer and auth mutant of ``make mutate``. The 0.9 s between the two still
    lets a loaded machine's poll run before the first call."""
    from heml.server.state import redis_backend
    from heml.v1 import heml_pb2 as pb

    monkeypatch.setattr(redis_backend, "SYNC_SECONDS", 0.1)
    monkeypatch.setattr(redis_backend, "MAX_STALE_SECONDS", 1.0)
    keys = tmp_path / "keys"
    alice = issue_key(keys, "alice")
    bearer = (("authorization", f"Bearer {alice}"),)
    own = Redis()
    try:
        with inprocess_server(folder, state=own.url, api_keys=str(keys)) as port:
            channel, stub = _stub(port)
            listing = pb.ListModelsRequest()
            assert [m.name for m in stub.ListModels(listing, timeout=30, metadata=bearer).models]
            own.halt()
            time.sleep(redis_backend.MAX_STALE_SECONDS + 0.3)
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(listing, timeout=30, metadata=bearer)
            assert info.value.code() == UNAVAILABLE, info.value.details()
            assert info.value.details() == (
                "cannot check API key revocations: shared state at "
                f"redis://127.0.0.1:{own.port}/0 is unreachable; try again shortly"
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(listing, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            own.start()
            end = time.monotonic() + 15
            while True:
                try:
                    stub.ListModels(listing, timeout=30, metadata=bearer)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == UNAVAILABLE and time.monotonic() < end
                    time.sleep(0.1)
            channel.close()
    finally:
        own.stop()
