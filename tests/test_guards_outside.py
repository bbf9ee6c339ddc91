"""Guards that hand-written semantic breaks (issue 18, outside review) got past the other tests.

Each test is written from a documented promise (docs/protocol.md, docs/model-privacy.md,
docs/security.md, docs/dp.md), not from the line it guards, and each fails when that guard is
removed or bent. Real components throughout: real keys and ciphertexts, the worker's gRPC
stack on loopback, real DP fits.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import heml
from heml.dp import BudgetAccountant, BudgetError, DPLinearRegression, DPLogisticRegression
from heml.errors import InvalidCiphertext, ResourceExhausted
from heml.he import prng, wire
from heml.he.codec import ClientCodec
from heml.he.decrypt import RANGE_FRACTION
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.plan import COLUMN, ROW
from heml.he.private import PRIVATE, check_public_key_p0, default_privacy_params, key_p1
from heml.he.scoring import Block, ServerScorer
from heml.info import LAYOUT_TO_PB
from heml.server.auth import issue_key
from heml.server.registry import load_model_file
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

from .guard_support import inprocess_server, linear_model

PARAMS = default_privacy_params()


# ---------------------------------------------------------------- model-privacy public keys
def test_p1_is_expanded_from_sha256_of_the_domain_and_the_nonce_and_differs_per_nonce():
    """docs/protocol.md: both sides expand p1 from SHA-256("heml/v1/model-privacy/public-key-p1"
    ‖ 0x00 ‖ key_nonce), so every nonce gives its own p1 (and a client written from the spec
    computes the p1 the server uses)."""
    nonces = [bytes(32), bytes(range(32)), b"\xff" * 32]
    p1s = []
    for nonce in nonces:
        seed = hashlib.sha256(b"heml/v1/model-privacy/public-key-p1" + b"\x00" + nonce).digest()
        expected = prng.expand(seed, PARAMS.n, PARAMS.primes)
        got = key_p1(nonce, PARAMS)
        assert got.shape == (len(PARAMS.primes), PARAMS.n)
        assert np.array_equal(got, expected)
        p1s.append(got)
    for i in range(len(p1s)):
        for j in range(i):
            # independent uniform polynomials agree on about N/q of their words: none
            assert np.count_nonzero(p1s[i] == p1s[j]) == 0


# ---------------------------------------------------------------- DP budget reservation
class _CsprngFailure(OSError):
    pass


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_the_budget_is_spent_before_the_first_noise_draw_and_kept_when_the_fit_fails(
    kind, monkeypatch
):
    """docs/dp.md: a fit reserves (epsilon, delta) before the mechanism uses the data values,
    and a failure after the reservation keeps the spend. The OS CSPRNG failing at the first
    noise draw is such a failure: the spend must already be in the ledger, and no model set."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(400, 3))
    if kind == "linear":
        y = X @ np.array([0.5, -0.25, 0.1])
        est = DPLinearRegression(epsilon=0.6, delta=1e-5, bounds_X=(-1, 1), bounds_y=(-1, 1))
    else:
        y = (X[:, 0] > 0).astype(int)
        est = DPLogisticRegression(epsilon=0.6, delta=1e-5, bounds_X=(-1, 1), classes=[0, 1])
    accountant = BudgetAccountant(epsilon=1.0, delta=1e-4)
    est.set_params(accountant=accountant)
    seen = []

    def failing_urandom(size):
        seen.append(accountant.spent)
        raise _CsprngFailure("entropy source unavailable")

    monkeypatch.setattr(os, "urandom", failing_urandom)
    with pytest.raises(_CsprngFailure):
        est.fit(X, y)
    monkeypatch.undo()
    assert seen and seen[0] == pytest.approx((0.6, 1e-5))  # paid before the first draw
    assert accountant.spent == pytest.approx((0.6, 1e-5))  # and kept after the failure
    assert not hasattr(est, "coef_")
    # the kept spend binds: a second fit of the same size no longer fits in the budget
    with pytest.raises(BudgetError):
        est.fit(X, y)
    assert accountant.spent == pytest.approx((0.6, 1e-5))


# ---------------------------------------------------------------- server: deadlines (unary)
def test_a_unary_block_without_time_for_its_work_is_refused_before_its_quota_is_charged(
    tmp_path,
):
    """docs/security.md, Deadlines and Quotas: when a block's header arrives the server compares
    the time left with the block's cost and answers DEADLINE_EXCEEDED without doing the work
    or charging the quota (tokens are taken after the deadline check). The streamed path is
    tested elsewhere; this is the unary Predict."""
    d = 4000  # a COLUMN block carries one ciphertext per feature: about 1.2 s at 0.3 ms each
    linear_model(d, "wide", 5).save(tmp_path / "wide.json")
    keys = tmp_path / "api-keys"
    # one COLUMN block computes 4096 sample slots: exactly one minute's quota
    token = issue_key(keys, "alice", predictions_per_minute=4096)
    auth = (("authorization", f"Bearer {token}"),)
    with inprocess_server(tmp_path, api_keys=str(keys)) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)
        # the count is what the header check needs; the bytes are never parsed on refusal
        request = pb.PredictRequest(
            model="wide", layout=LAYOUT_TO_PB["column"], n=1, ciphertexts=[b"x"] * d
        )
        for _attempt in range(5):  # under load the client's own timer may answer first
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, metadata=auth, timeout=0.6)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
            if "ms left" in info.value.details():
                break
        assert f"but {d} ciphertexts need about 1200 ms" in info.value.details()
        # nothing was charged: the minute's 4096 slots are all there for the next block,
        # which gets as far as parsing its (malformed) ciphertexts
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, metadata=auth, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        # positive control: that block did take the minute's quota
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, metadata=auth, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        channel.close()


# ---------------------------------------------------------------- model-privacy fingerprint
_PRINT_FINGERPRINT = (
    "import sys; from pathlib import Path; from heml.server.registry import load_model_file; "
    "print(load_model_file(Path(sys.argv[1])).info.fingerprint)"
)


def test_a_private_models_fingerprint_is_keyed_afresh_by_every_server_run(tmp_path):
    """docs/model-privacy.md: the fingerprint is HMAC-SHA256 of the model under a random key
    the server draws at start, so it names the model within one run only and a client cannot
    confirm a guessed model. Two runs (two processes) must publish different fingerprints for
    the same file; the default mode's plain fingerprint is the same in both (control)."""

    rng = np.random.default_rng(11)
    X = rng.uniform(-1, 1, size=(200, 6))

    clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    heml.export(clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True).save(
        tmp_path / "secret.json"
    )
    heml.export(clf, name="open", bounds=(-1.0, 1.0)).save(tmp_path / "open.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _PRINT_FINGERPRINT, str(tmp_path / name)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("secret.json", "secret.json", "open.json", "open.json")
    ]
    out = [r.communicate(timeout=120)[0].strip() for r in runs]
    assert all(r.returncode == 0 for r in runs)
    secret_a, secret_b, open_a, open_b = out
    assert len(secret_a) == len(secret_b) == 64
    assert open_a == open_b  # control: an unkeyed fingerprint is the same in every run
    assert secret_a != secret_b


# ---------------------------------------------------------------- SDK: reply shape
@pytest.mark.parametrize("layout", [ROW, COLUMN])
def test_a_reply_one_byte_longer_or_shorter_than_its_layout_is_rejected(layout):
    """docs/security.md, the SDK against a malicious server: every reply must have the exact
    byte size of its layout, otherwise it is rejected. Real replies from the real scorer; one
    byte appended (the attacker's bytes would otherwise be ignored) or cut."""
    rng = np.random.default_rng(8)
    d, k = 5, 2
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    server = ServerScorer(W, b, np.zeros(d), np.ones(d), 1e-4)
    codec = ClientCodec(server.plans, d, k, KeySet())
    Z = rng.uniform(-1, 1, size=(6, d))
    block = Block(0, 6, ROW, 3) if layout == ROW else Block(0, 6, COLUMN, 0)
    replies = server.evaluate(block.layout, block.n, block.s, codec.encrypt(Z, block))
    # control: the honest replies decrypt to the scores
    np.testing.assert_allclose(codec.decrypt(replies, block), Z @ W.T + b, atol=1e-3)
    for i in (0, len(replies) - 1):
        for wrong in (replies[i] + b"\x00", replies[i][:-1]):
            bad = list(replies)
            bad[i] = wrong
            with pytest.raises(InvalidCiphertext, match=f"reply has {len(wrong)} bytes"):
                codec.decrypt(bad, block)


# ---------------------------------------------------------------- SDK: public key nonces
class _RecordingStub:
    """The SDK's real stub, with RegisterKey requests recorded on their way to the server."""

    def __init__(self, stub) -> None:
        self._stub, self.registered = stub, []

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def RegisterKey(self, request, **kwargs):
        self.registered.append(request)
        return self._stub.RegisterKey(request, **kwargs)


def test_each_registration_uses_a_fresh_random_nonce(tmp_path):
    """docs/model-privacy.md: the client picks a random 32-byte nonce for each key it registers.
    Handles of one model share the secret s (one key per (server, model)); with a repeated
    nonce they would share p1 too, and the server could subtract two uploads
    p0 = -p1*s + e to get e - e', small, and average s out of many. Real registrations over
    gRPC; the control shows that signal for two uploads under one nonce."""

    rng = np.random.default_rng(4)
    X = rng.uniform(-1, 1, size=(200, 8))
    clf = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))
    heml.export(clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True).save(
        tmp_path / "secret.json"
    )
    with inprocess_server(tmp_path) as port, heml.Client(f"127.0.0.1:{port}") as client:
        client._stub = recorder = _RecordingStub(client._stub)
        for _ in range(2):
            client.model("secret").predict_proba(X[:1])  # a new handle registers its key
        first, second = recorder.registered
        plan = client.model("secret").info.plans[PRIVATE]
        s_key = client.keys.for_peer(client.target, "secret").get(plan.params)
    assert len(first.key_nonce) == len(second.key_nonce) == 32
    assert first.key_nonce != second.key_nonce
    params = plan.params

    def words(p0: bytes) -> np.ndarray:
        n, count = params.n, len(params.primes)
        raw = np.ndarray((count, n), dtype="<u8", buffer=p0 + b"\0", strides=(7 * n, 7))
        return (raw & np.uint64((1 << 56) - 1)).astype(np.uint64)

    def difference(a: bytes, b: bytes) -> np.ndarray:
        wa, wb = words(a), words(b)
        return np.stack(
            [(wa[i] + np.uint64(q) - wb[i]) % np.uint64(q) for i, q in enumerate(params.primes)]
        )

    # the uploads of the two registrations differ by a pseudorandom polynomial
    check_public_key_p0(difference(first.public_key, second.public_key), params)
    # control: two uploads of the same key under one nonce differ by e - e' (degenerate)
    nonce = bytes(range(32))
    same = difference(public_key_p0(s_key, nonce), public_key_p0(s_key, nonce))
    with pytest.raises(InvalidCiphertext, match="degenerate"):
        check_public_key_p0(same, params)


# ---------------------------------------------------------------- SDK: model-privacy range
def _private_replies(codec, block, value_at_first: float) -> list[bytes]:
    """Replies (c1 = 0) that decrypt to zero except value_at_first * q at the first output
    position of the first reply: what a server that ignores the model can send."""

    plan = codec.plans[PRIVATE]
    bits = plan.reply_bits
    geo = codec._row_geometry(block.s, PRIVATE)
    out = []
    for r in range(codec.reply_count(block)):
        c0 = np.zeros(geo.output_positions(r % geo.groups).size, dtype=object)
        if r == 0:
            c0[0] = round(value_at_first * 2**bits)
        words = np.array([int(v) % (1 << bits) for v in c0], dtype=np.uint64)
        out.append(wire.pack_reply(words, np.zeros(plan.params.n, dtype=np.uint64), bits))
    return out


@pytest.mark.parametrize("sign", [1, -1])
def test_model_privacy_replies_get_the_range_check_too(tmp_path, sign):
    """docs/security.md: model-privacy mode gets the shape and range checks (not the client
    flooding). A reply value beyond 0.475 q is rejected; one just inside is accepted."""

    rng = np.random.default_rng(6)
    X = rng.uniform(-1, 1, size=(200, 8))
    clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    path = tmp_path / "secret.json"
    heml.export(clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True).save(path)
    served = load_model_file(path)
    plan = served.private.plan
    codec = ClientCodec({PRIVATE: plan}, 8, served.private.k, KeySet())
    block = Block(0, 3, PRIVATE, 3)
    inside = codec.decrypt(_private_replies(codec, block, sign * (RANGE_FRACTION - 0.001)), block)
    assert inside.shape == (3, served.private.k)
    with pytest.raises(InvalidCiphertext, match=r"^1 decrypted value\(s\) outside the range"):
        codec.decrypt(_private_replies(codec, block, sign * (RANGE_FRACTION + 0.001)), block)


# ---------------------------------------------------------------- server: lifetime quota last
def test_unary_blocks_refused_by_the_per_call_limit_never_spend_the_lifetime_quota(tmp_path):
    """docs/security.md and docs/model-privacy.md: the lifetime quota per key is charged last,
    after the deadline, per-call and per-minute checks, so a refused block charges nothing.
    Single predictions go as unary Predict calls; under a per-call limit below one block's
    cost every one is refused for that limit, however many are sent (more than the quota)."""
    rng = np.random.default_rng(9)
    X = rng.uniform(-1, 1, size=(200, 8))
    clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    heml.export(clf, name="secret", bounds=(-1.0, 1.0), model_privacy=True).save(
        tmp_path / "secret.json"
    )
    quota = load_model_file(tmp_path / "secret.json").model.privacy["max_predictions_per_key"]
    # control: without the per-call limit the same calls reach the lifetime quota
    with inprocess_server(tmp_path) as port, heml.Client(f"127.0.0.1:{port}") as client:
        model = client.model("secret")
        for _ in range(quota):
            model.predict_proba(X[:1])
        with pytest.raises(ResourceExhausted, match="quota of .* predictions per key is used up"):
            model.predict_proba(X[:1])
    # one private block computes 4096 // 8 = 512 sample slots: above a limit of 100 per call
    with (
        inprocess_server(tmp_path, max_samples_per_request=100) as port,
        heml.Client(f"127.0.0.1:{port}") as client,
    ):
        model = client.model("secret")
        for _ in range(quota + 2):
            with pytest.raises(ResourceExhausted, match="limit of 100 per call"):
                model.predict_proba(X[:1])


# ---------------------------------------------------------------- server: API key comparison
def _list_models(port: int, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = heml_pb2_grpc.InferenceStub(channel)
        try:
            stub.ListModels(
                pb.ListModelsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=15,
            )
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize("position", [0, 31, 63])
def test_an_api_key_matches_only_the_whole_sha256_of_its_entry(tmp_path, position):
    """docs/security.md: the server hashes the presented key and compares the whole digest with
    every entry. A key-file entry whose SHA-256 differs in one hex digit (first, middle, last)
    does not let the key in; the exact entry does (control)."""
    linear_model(3, "small", 1).save(tmp_path / "small.json")
    keys = tmp_path / "api-keys"
    token = issue_key(keys, "alice")
    entry = json.loads(keys.read_text())
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    with inprocess_server(tmp_path, api_keys=str(keys)) as port:
        assert _list_models(port, token) == grpc.StatusCode.OK
    digest = entry["sha256"]
    flipped = "0" if digest[position] != "0" else "1"
    entry["sha256"] = digest[:position] + flipped + digest[position + 1 :]
    keys.write_text(json.dumps(entry) + "\n")
    with inprocess_server(tmp_path, api_keys=str(keys)) as port:
        assert _list_models(port, token) == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- DP: errors never quote data
def _all_text(exc: BaseException) -> str:
    """The message of an exception and of every exception chained to it."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


SECRET = 7351.0429  # a training value no message may repeat


def _quotes_secret(text: str) -> bool:
    """Whether text shows SECRET as str() does (7351.0429) or numpy prints it (7.35104290e+03)."""
    return "7351.0429" in text or "7.351" in text


def _bad_inputs():
    rng = np.random.default_rng(12)
    X = rng.uniform(-1, 1, size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    text = X.astype(object)
    text[7, 1] = f"{SECRET}kg"  # not a number: its conversion error quotes it
    one_d = X[:, 0].copy()
    one_d[0] = SECRET  # 1-D X: the 2-D error prints the array
    complex_x = X.astype(complex)
    complex_x[0, 0] = complex(SECRET, 1.0)
    return [(text, y), (one_d, y), (complex_x, y)]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_fit_errors_never_quote_a_training_value(kind, case):
    """docs/dp.md: error messages of fit never quote a training value (nor does any exception
    chained to them). Control: scikit-learn's own check quotes the value for the same input."""
    from sklearn.utils import check_X_y

    X, y = _bad_inputs()[case]
    with pytest.raises(ValueError) as plain:
        check_X_y(X, y)
    assert _quotes_secret(_all_text(plain.value))  # the leak the estimators must not repeat
    if kind == "linear":
        est = DPLinearRegression(epsilon=1.0, delta=1e-5, bounds_X=(-1, 1), bounds_y=(-1, 1))
    else:
        est = DPLogisticRegression(epsilon=1.0, delta=1e-5, bounds_X=(-1, 1), classes=[0, 1])
    accountant = BudgetAccountant(epsilon=2.0, delta=1e-4)
    est.set_params(accountant=accountant)
    with pytest.raises((ValueError, TypeError)) as info:
        est.fit(X, y)
    assert not _quotes_secret(_all_text(info.value))
    assert accountant.spent == (0.0, 0.0)  # bad input costs nothing
