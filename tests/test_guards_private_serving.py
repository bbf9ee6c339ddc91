"""The server's model-privacy path, in-process, each check at its bound (issue 18).

What docs/model-privacy.md and docs/security.md promise for a model served in model-privacy
mode: only PRIVATE blocks with a registered, well-formed ``key_id``; ``s`` and ``n`` within the
plan's bounds; a lifetime quota per key identity (the API key when the call carries one, else
the registered public key) charged for every computed sample slot, after the other checks, and
only for a registered key; the registered keys bounded per identity (the API key, else the
peer's host whatever its port); a published fingerprint that a guessed model cannot confirm.

The worker's gRPC stack runs in this process (tests/guard_support.py) so that `make mutate`
sees which test reaches which function; tests/test_security_model_privacy.py runs the same
promises through `heml serve`'s worker processes.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import grpc
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import heml
from heml.errors import ModelError
from heml.he.private import (
    MAX_KEYS_PER_IDENTITY,
    PRIVATE,
    make_private_plan,
    max_private_quota,
)
from heml.info import LAYOUT_TO_PB, model_info_from_pb
from heml.server import registry as registry_module
from heml.server.auth import issue_key
from heml.server.registry import Registry, load_model_file
from heml.server.servicer import Block, take_private_quota
from heml.server.status import RequestError
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .guard_support import inprocess_server, linear_model

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
D = 30  # features of the private model: its plan packs at most 4096 // 30 = 136 per ciphertext
SMAX = 4096 // D
QUOTA = 12  # max_predictions_per_key of the private model (< the d = 30 estimate, 18.9)
NOT_REGISTERED = (
    "public key not registered with this server process; call RegisterKey (idempotent) and retry"
)


def _classifier(d: int = D, seed: int = 0) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(200, d))
    return LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("private-models")
    clf = _classifier()
    heml.export(
        clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True, max_predictions_per_key=QUOTA
    ).save(folder / "secret.json")
    linear_model(3, "small", 1).save(folder / "small.json")
    registry, errors = Registry.from_folder(folder)
    assert errors == {}
    return folder, registry, clf


@pytest.fixture()
def fresh(models, tmp_path):
    """A fresh registry (a new key store and quota per test) of the same files."""
    folder, _registry, clf = models
    registry, errors = Registry.from_folder(folder)
    assert errors == {}
    return folder, registry, clf


def _stub(port: int):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    return channel, heml_pb2_grpc.InferenceStub(channel)


def _register(model: heml.client.RemoteModel) -> str:
    return model._register_key()


def _header(key_id: str, n: int, s: int, **fields) -> pb.PredictRequest:
    return pb.PredictRequest(
        model="secret",
        layout=LAYOUT_TO_PB[PRIVATE],
        n=n,
        samples_per_ciphertext=s,
        key_id=key_id,
        **fields,
    )


def _request(model, X) -> pb.PredictRequest:
    """A PRIVATE block of the rows of X, encrypted by the SDK's codec under the model's key."""
    codec = model._codec
    (block,) = codec.blocks(len(X))
    cts = codec.encrypt(np.asarray(X, dtype=float), block)
    request = model._header(block, len(cts))
    request.ciphertexts.extend(cts)
    return request


def _refused(call, request, code, message, metadata=None):
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=30, metadata=metadata)
        if not isinstance(result, pb.PredictResponse):
            list(result)
    assert info.value.code() == code, info.value.details()
    assert info.value.details() == message
    return info.value


def _quota_message(used: int, requested: int) -> str:
    return (
        f"model-privacy quota of {QUOTA} predictions per key is used up ({used} used, "
        f"{requested} requested): d+1 exact answers would reveal the model"
    )


# ----------------------------------------------------------------------------- the model file
def test_a_private_model_is_served_with_its_private_plan_only(models):
    folder, registry, _clf = models
    served = registry.get("secret")
    model = served.model
    assert served.scorer is None and served.private is not None
    assert served.path == folder / "secret.json"
    info = model_info_from_pb(served.info)
    assert list(info.plans) == [PRIVATE] and info.privacy["max_predictions_per_key"] == QUOTA
    # the plan is the one for the file's own weights, bounds and tolerance
    expected = make_private_plan(
        model.coef,
        model.intercept,
        model.bounds.center,
        model.bounds.half_width,
        tolerance=model.tolerance,
    )
    published = info.plans[PRIVATE]
    assert published.log2_scale_w == expected.log2_scale_w
    assert published.log2_scale_x == expected.log2_scale_x
    assert published.reply_bits == expected.reply_bits
    assert served.private.plan == expected


def test_the_published_fingerprint_cannot_confirm_a_guessed_model(models):
    """The fingerprint of a model-privacy model is HMAC-SHA256 under a per-run server key:
    the plain SHA-256 a client could compute from a guessed W is not published."""
    folder, registry, _clf = models
    served = registry.get("secret")
    guess = served.model.fingerprint()
    published = served.info.fingerprint
    assert published != guess and len(published) == 64
    key = registry_module._FINGERPRINT_KEY
    assert published == hmac.new(key, guess.encode(), hashlib.sha256).hexdigest()
    # the default mode publishes the plain fingerprint (positive control)
    small = registry.get("small")
    assert small.info.fingerprint == small.model.fingerprint()
    # the same within a run (every worker agrees), whatever loads it
    assert load_model_file(folder / "secret.json").info.fingerprint == published


def test_a_private_model_file_with_a_quota_that_gives_w_away_is_refused_at_load(tmp_path):
    """A file edited by hand (or from an older heml) may carry a larger quota than export
    allows: the server refuses it when it loads the file; the largest allowed quota loads."""
    clf = _classifier()
    model = heml.export(clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True)
    path = tmp_path / "secret.json"
    model.save(path)
    data = json.loads(path.read_text())
    allowed = max_private_quota(load_model_file(path).private.plan, D)  # 18 at d = 30
    data["privacy"]["max_predictions_per_key"] = allowed
    path.write_text(json.dumps(data))
    assert load_model_file(path).model.privacy["max_predictions_per_key"] == allowed
    data["privacy"]["max_predictions_per_key"] = allowed + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="recover the weights"):
        load_model_file(path)


# ----------------------------------------------------------------------------- predictions
def test_private_blocks_score_correctly_unary_and_streamed(fresh):
    folder, registry, clf = fresh
    X = np.random.default_rng(3).uniform(-1, 1, size=(3, D))
    expected = clf.predict_proba(X)
    with inprocess_server(folder, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        model = client.model("secret")
        np.testing.assert_allclose(model.predict_proba(X), expected, atol=1e-4)
        assert model.last_call.layouts == {PRIVATE: 3}
        request = _request(model, X[:2])
        reply = client._stub.Predict(request, timeout=30)
        plan = model.info.plans[PRIVATE]
        assert (reply.model, reply.version, reply.n) == ("secret", 1, 2)
        assert reply.layout == LAYOUT_TO_PB[PRIVATE] and reply.reply_bits == plan.reply_bits
        # thread CPU time and wall time are different clocks: 1 ms of slack for their granularity
        assert len(reply.replies) == 1
        assert 0 < reply.server_cpu_seconds <= reply.server_seconds + 1e-3
        block = model._codec.blocks(2)[0]
        scores = model._codec.decrypt(list(reply.replies), block)
        np.testing.assert_allclose(scores.ravel(), clf.decision_function(X[:2]), atol=1e-3)
        streamed = list(client._stub.PredictStream(iter([_request(model, X[2:])]), timeout=30))
        assert [r.n for r in streamed] == [1] and streamed[0].reply_bits == plan.reply_bits


# ----------------------------------------------------------------------------- header checks
def test_private_headers_are_checked_at_their_bounds(fresh):
    """Each refusal at its bound, by a header alone (PredictStream: the ciphertexts never need
    to come); a header that passes every check reaches the lifetime quota (RESOURCE_EXHAUSTED
    with the slots it would compute), which proves it was accepted."""
    folder, registry, _clf = fresh
    with inprocess_server(folder, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        key_id = _register(client.model("secret"))
        channel, stub = _stub(port)
        stream = stub.PredictStream

        def send(request):
            return iter([request])

        smax_msg = f"samples_per_ciphertext must be in [1, {SMAX}], got "
        for request, code, message in [
            (_header("", 1, 1), INVALID, "model-privacy requests need the key_id from RegisterKey"),
            (
                _header(key_id[:-1], 1, 1),
                INVALID,
                "key_id must be the 64 lowercase hex characters RegisterKey returned",
            ),
            (
                _header(key_id.upper(), 1, 1),
                INVALID,
                "key_id must be the 64 lowercase hex characters RegisterKey returned",
            ),
            (_header(key_id, 1, 0), INVALID, smax_msg + "0"),
            (_header(key_id, 1, SMAX + 1), INVALID, smax_msg + str(SMAX + 1)),
            (_header(key_id, 0, 1), INVALID, "n must be in [1, 256] for s=1, got 0"),
            (_header(key_id, 257, 1), INVALID, "n must be in [1, 256] for s=1, got 257"),
            (_header(key_id, 2 * 256 + 1, 2), INVALID, "n must be in [1, 512] for s=2, got 513"),
            (
                _header(key_id, 3, 2, total_ciphertexts=1),
                INVALID,
                "total_ciphertexts=1, but model 'secret' (d=30) needs 2 for this block",
            ),
            # at the bounds: accepted, then refused by the lifetime quota of 12 (0 used)
            (_header(key_id, 256, 1), EXHAUSTED, _quota_message(0, 256)),
            (_header(key_id, SMAX * 256, SMAX), EXHAUSTED, _quota_message(0, SMAX * 256)),
            # every slot of every ciphertext group is charged: 13 samples at s = 2 compute 14
            (_header(key_id, 13, 1), EXHAUSTED, _quota_message(0, 13)),
            (_header(key_id, 13, 2), EXHAUSTED, _quota_message(0, 14)),
        ]:
            _refused(stream, send(request), code, message)
        # 11 samples at s = 2 are 6 groups of 2 = 12 slots: exactly the quota, accepted
        # (the stream then ends without its 6 ciphertexts)
        _refused(
            stream, send(_header(key_id, 11, 2)), INVALID, "stream ended after 0 of 6 ciphertexts"
        )
        _refused(stream, send(_header(key_id, 1, 1)), EXHAUSTED, _quota_message(12, 1))
        # the default layouts are refused for a private model, PRIVATE for a default one
        for layout in ("row", "column"):
            request = _header(key_id, 1, 1)
            request.layout = LAYOUT_TO_PB[layout]
            message = "model 'secret' is served in model-privacy mode only (layout PRIVATE)"
            _refused(stub.Predict, request, PRECONDITION, message)
        small = _header(key_id, 1, 1)
        small.model = "small"
        message = "model 'small' is not served in model-privacy mode; use ROW or COLUMN"
        _refused(stub.Predict, small, PRECONDITION, message)
        channel.close()


def test_a_block_of_the_wrong_size_is_refused_before_any_quota_is_charged(fresh):
    folder, registry, _clf = fresh
    X = np.zeros((3, D))
    with inprocess_server(folder, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        model = client.model("secret")
        request = _request(model, X)  # n = 3 at s = 3: one ciphertext
        assert (request.samples_per_ciphertext, len(request.ciphertexts)) == (3, 1)
        request.samples_per_ciphertext, request.total_ciphertexts = 2, 0  # now 2 are needed
        message = (
            "got 1 ciphertexts; this block needs 2 (use PredictStream to split a block across "
            "messages)"
        )
        _refused(client._stub.Predict, request, INVALID, message)
        # nothing was charged: the whole quota is still there
        model.predict_proba(np.zeros((QUOTA, D)))
        with pytest.raises(heml.errors.ResourceExhausted, match=r"\(12 used, 1 requested\)"):
            model.predict_proba(X[:1])


# ----------------------------------------------------------------------------- the lifetime quota
def test_without_api_keys_the_quota_is_per_registered_key_and_only_for_known_keys(fresh):
    """The count lives with the registered public key: exactly up to the limit, not one more;
    an unknown (well-formed) key_id is refused NOT_FOUND and charges nothing; a second public
    key has a count of its own (documented: a new public key is a new identity)."""
    folder, registry, _clf = fresh
    with inprocess_server(folder, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        first = client.model("secret")
        key_id = _register(first)
        _refused(client._stub.Predict, _request_with(first, 1, "0" * 64), NOT_FOUND, NOT_REGISTERED)
        first.predict_proba(np.zeros((8, D)))
        _refused(
            client._stub.Predict, _request(first, np.zeros((5, D))), EXHAUSTED, _quota_message(8, 5)
        )
        _refused(
            client._stub.PredictStream,
            iter([_request(first, np.zeros((5, D)))]),
            EXHAUSTED,
            _quota_message(8, 5),
        )
        first.predict_proba(np.zeros((4, D)))  # 12: exactly the quota
        _refused(
            client._stub.Predict,
            _request(first, np.zeros((1, D))),
            EXHAUSTED,
            _quota_message(12, 1),
        )
        assert first._key_id == key_id
        second = client.model("secret")  # a new nonce: a new public key
        assert _register(second) != key_id
        second.predict_proba(np.zeros((QUOTA, D)))


def _request_with(model, n: int, key_id: str) -> pb.PredictRequest:
    request = _request(model, np.zeros((n, D)))
    request.key_id = key_id
    return request


def test_with_api_keys_the_quota_binds_to_the_api_key_in_both_rpcs(fresh, tmp_path):
    """With API keys the count is per (model, API key), in the shared quota table: a second
    public key under the same API key does not get a new allowance; another API key does."""
    folder, registry, _clf = fresh
    keys = tmp_path / "keys"
    alice, bob = issue_key(keys, "alice"), issue_key(keys, "bob")
    with inprocess_server(folder, registry, api_keys=str(keys)) as port:
        target = f"127.0.0.1:{port}"
        with heml.Client(target, api_key=alice) as a1, heml.Client(target, api_key=alice) as a2:
            a1.model("secret").predict_proba(np.zeros((8, D)))
            other = a2.model("secret")  # alice again, another public key
            for call in (a2._stub.Predict, a2._stub.PredictStream):
                request = _request(other, np.zeros((5, D)))
                payload = request if call is a2._stub.Predict else iter([request])
                _refused(call, payload, EXHAUSTED, _quota_message(8, 5), metadata=_bearer(alice))
            stream = a2._stub.PredictStream(
                iter([_request(other, np.zeros((4, D)))]), timeout=30, metadata=_bearer(alice)
            )
            assert [r.n for r in stream] == [4]  # 12: exactly the quota
        with heml.Client(target, api_key=bob) as b:
            b.model("secret").predict_proba(np.zeros((QUOTA, D)))  # bob's own 12


def _bearer(key: str):
    return (("authorization", f"Bearer {key}"),)


# ----------------------------------------------------------------------------- the key registry
def test_registered_keys_are_capped_per_identity(fresh, tmp_path):
    """At most MAX_KEYS_PER_IDENTITY keys per identity: without API keys the identity is the
    peer's host whatever its port (each client below has a connection of its own), with API
    keys it is the API key, so another API key's registrations evict none of alice's."""
    folder, registry, _clf = fresh
    keys = tmp_path / "keys"
    alice, bob = issue_key(keys, "alice"), issue_key(keys, "bob")
    with inprocess_server(folder, registry) as port:
        ids = []
        for _ in range(MAX_KEYS_PER_IDENTITY + 1):
            with heml.Client(f"127.0.0.1:{port}") as c:
                ids.append(_register(c.model("secret")))
        store = registry.get("secret").private.keys
        assert ids[0] not in store and all(k in store for k in ids[1:])
    registry2, _errors = Registry.from_folder(folder)
    with inprocess_server(folder, registry2, api_keys=str(keys)) as port:
        target = f"127.0.0.1:{port}"
        with heml.Client(target, api_key=alice) as a:
            alices = [_register(a.model("secret")) for _ in range(MAX_KEYS_PER_IDENTITY)]
        with heml.Client(target, api_key=bob) as b:
            bobs = [_register(b.model("secret")) for _ in range(MAX_KEYS_PER_IDENTITY + 1)]
        store = registry2.get("secret").private.keys
        assert all(k in store for k in alices)  # bob's flood evicted only bob's oldest
        assert bobs[0] not in store and all(k in store for k in bobs[1:])


def test_a_key_evicted_between_the_quota_and_the_work_is_not_found(fresh):
    """The key store may evict a key while a block is on its way (another registration of the
    same identity): the block is then refused NOT_FOUND, not evaluated with a missing key."""
    folder, registry, _clf = fresh
    served = registry.get("secret")
    with inprocess_server(folder, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        model = client.model("secret")
        request = _request(model, np.zeros((1, D)))
        block = Block(served, request)
        take_private_quota(served, request.key_id, 1)
        block.add(request.ciphertexts)
        for _ in range(MAX_KEYS_PER_IDENTITY):  # the same peer host: the first key goes
            _register(client.model("secret"))
        assert request.key_id not in served.private.keys
        with pytest.raises(RequestError) as info:
            block.finish()
        assert (info.value.code, str(info.value)) == (NOT_FOUND, NOT_REGISTERED)
        with pytest.raises(RequestError) as info:
            take_private_quota(served, request.key_id, 1)
        assert (info.value.code, str(info.value)) == (NOT_FOUND, NOT_REGISTERED)


class _Peer:
    """The one thing caller_identity reads from a call without an API key: gRPC's peer."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_without_api_keys_the_key_identity_is_the_peer_host_without_its_port():
    """A client that reconnects (a new port) is the same identity, over IPv4 as over IPv6;
    another host is another identity (the per-identity key cap, docs/model-privacy.md)."""
    from heml.server.servicer import caller_identity

    def identity(peer: str) -> str:
        return caller_identity(_Peer(peer))

    assert identity("ipv4:10.0.0.1:5000") == identity("ipv4:10.0.0.1:5001") == "peer:ipv4:10.0.0.1"
    assert identity("ipv4:10.0.0.2:5000") != identity("ipv4:10.0.0.1:5000")
    v6 = "ipv6:%5B2001:db8::1%5D"
    assert identity(v6 + ":443") == identity(v6 + ":80") == "peer:" + v6
    assert identity("ipv6:%5B2001:db8::2%5D:443") != identity(v6 + ":443")


def test_a_key_is_registered_for_the_version_it_names(tmp_path):
    """RegisterKey names a model version: a key registered for version 1 scores version 1
    while version 2 is the latest (and is unknown to version 2)."""
    clf = _classifier()
    for version in (1, 2):
        model = heml.export(
            clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True, max_predictions_per_key=5
        )
        model.version = version
        model.save(tmp_path / f"secret-v{version}.json")
    registry, errors = Registry.from_folder(tmp_path)
    assert errors == {}
    with inprocess_server(tmp_path, registry) as port, heml.Client(f"127.0.0.1:{port}") as client:
        old = client.model("secret", version=1)
        key_id = _register(old)
        assert key_id in registry.get("secret", 1).private.keys
        assert key_id not in registry.get("secret", 2).private.keys
        np.testing.assert_allclose(
            old.predict_proba(np.zeros((1, D))), clf.predict_proba(np.zeros((1, D))), atol=1e-4
        )
        request = _request(old, np.zeros((2, D)))
        assert request.version == 1
        replies = list(client._stub.PredictStream(iter([request]), timeout=30))
        assert [(r.version, r.n) for r in replies] == [(1, 2)]


def test_a_servicer_without_the_interceptor_serves_private_models(models):
    """The servicer's hooks into the interceptor (the per-call limit, the shared quota, the
    API key identity) are no-ops without it: the quota is then kept with each registered key."""
    from concurrent import futures

    from heml.server.servicer import InferenceServicer, add_to_server

    folder, _registry, clf = models
    registry, _errors = Registry.from_folder(folder)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    add_to_server(InferenceServicer(registry), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with heml.Client(f"127.0.0.1:{port}") as client:
            model = client.model("secret")
            X = np.zeros((QUOTA, D))
            np.testing.assert_allclose(model.predict_proba(X), clf.predict_proba(X), atol=1e-4)
            with pytest.raises(heml.errors.ResourceExhausted, match=r"\(12 used, 1 requested\)"):
                model.predict_proba(X[:1])
    finally:
        server.stop(None).wait()
