"""The SDK against a malicious server that sees the decrypted results (issue 13, item 7).

A decrypted value is c0 + c1·s, linear in the client's secret s, so a server can craft a reply
that decrypts to coefficients of s (c1 = Δ, c0 = 0 gives Δ·s_p at every output position p)
and read s off the scores if they reach it (Li–Micciancio). The attacker here is a real gRPC
server in this process speaking heml's protocol: it publishes a real model's plans and answers
Predict with crafted replies. Each attack first succeeds against the unprotected SDK (positive
control: raw decryption, no range check, no flooding), then fails against the default one.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
from concurrent import futures

import grpc
import numpy as np
import pytest

import heml
from heml.errors import KeyFileError, ReplyRejected
from heml.he import wire
from heml.he.decrypt import RANGE_FRACTION
from heml.he.plan import COLUMN, flood_bound, key_noise_bound
from heml.he.scoring import ServerScorer
from heml.info import model_info_pb
from heml.server.registry import server_info_pb
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

N_ROWS = 4096  # one full COLUMN block: one reply carries N output coefficients


class CraftingServicer(heml_pb2_grpc.InferenceServicer):
    """Publishes a real model; every Predict reply decrypts to delta·s_p + offset (units of
    q / 2^bits) at output position p, whatever the client sent."""

    def __init__(self, model: heml.LinearModel) -> None:
        b = model.bounds
        self.scorer = ServerScorer(model.coef, model.intercept, b.center, b.half_width, 1e-4)
        self.info = model_info_pb(model, self.scorer.plans, server_info_pb(), "0" * 64)
        self.delta = 1
        self.offset = 0
        self.extra_replies = 0
        self.cut_bytes = 0
        self.calls = 0

    def GetModel(self, request, context):
        return self.info

    def Predict(self, request, context):
        self.calls += 1
        plan = self.scorer.plans[COLUMN]
        bits, n_coeffs = plan.reply_bits, plan.params.n
        if request.layout != pb.COLUMN:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this attacker answers COLUMN only")
        mask = (1 << bits) - 1
        c0 = np.full(request.n, self.offset & mask, dtype=np.uint64)
        c1 = np.zeros(n_coeffs, dtype=np.uint64)
        c1[0] = self.delta & mask  # the constant polynomial delta: (c1·s)[p] = delta·s_p
        blob = wire.pack_reply(c0, c1, bits)
        replies = [blob[: len(blob) - self.cut_bytes]] * (
            self.scorer.k * plan.digits + self.extra_replies
        )
        return pb.PredictResponse(
            model=request.model, version=1, layout=request.layout, n=request.n,
            reply_bits=bits, replies=replies,
        )  # fmt: skip


@contextlib.contextmanager
def crafting_server(model):
    """(servicer, target): a gRPC server in this process that publishes ``model`` and answers
    with the replies its CraftingServicer crafts; stopped on the way out."""
    servicer = CraftingServicer(model)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    heml_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def attacker(cancer):
    _X, _y, clf = cancer
    with crafting_server(heml.export(clf, name="cancer")) as pair:
        yield pair


def _score_unit(servicer: CraftingServicer) -> float:
    """One unit of q / 2^bits as a score (what the attacker divides by)."""
    plan = servicer.scorer.plans[COLUMN]
    return plan.params.q / 2.0**plan.reply_bits / (plan.scale_x * plan.scale_w)


def _run(attacker, X, *, delta: int, offset: int = 0, protect: bool, extra: int = 0):
    """One call: the client's secret s and the scores the attacker gets to see."""
    servicer, target = attacker
    servicer.delta, servicer.offset, servicer.extra_replies = delta, offset, extra
    with heml.Client(target, timeout=30, retries=0) as client:
        model = client.model("cancer")
        model._codec.protect = protect
        s = model._codec.keys.get(model.info.plans[COLUMN].params).s.astype(np.int64)
        scores = model.decision_function(X.iloc[:N_ROWS], layout="column")
    return s, scores


def _rows(X) -> object:
    reps = -(-N_ROWS // len(X))
    return X.iloc[np.tile(np.arange(len(X)), reps)[:N_ROWS]]


def test_a_reply_that_decrypts_to_the_key_teaches_the_attacker_nothing(attacker, cancer):
    """c1 = 1, c0 = 0 (the issue's example): each score is s_p · unit plus nothing else."""
    X = _rows(cancer[0])
    servicer = attacker[0]
    unit = _score_unit(servicer)

    # positive control: raw decryption hands over the whole key, exactly
    s, scores = _run(attacker, X, delta=1, protect=False)
    guess = np.rint(scores / unit).astype(np.int64)
    np.testing.assert_array_equal(guess, s[:N_ROWS])

    # protected: scores are flooded far beyond the key's contribution
    s, scores = _run(attacker, X, delta=1, protect=True)
    plan = servicer.scorer.plans[COLUMN]
    assert flood_bound(plan) >= 4 * key_noise_bound(plan) > 4 * unit
    assert np.abs(scores).max() <= flood_bound(plan) + unit  # the flood stays in its bound
    s = s[:N_ROWS]
    guess = np.clip(np.rint(scores / unit), -1, 1).astype(np.int64)
    accuracy = float(np.mean(guess == s))  # chance: 1/3 (s is uniform ternary)
    nonzero = s != 0
    signs = float(np.mean(np.sign(scores[nonzero]) == s[nonzero]))  # chance: 1/2
    corr = float(np.corrcoef(scores, s)[0, 1])
    assert accuracy < 0.37, accuracy
    assert abs(signs - 0.5) < 0.04, signs
    assert abs(corr) < 0.07, corr  # 4.5 standard errors at n = 4096


def test_a_reply_outside_the_plans_range_is_rejected_and_retires_the_key(attacker, cancer):
    """c1 = Δ with Δ·s_p outside what any honest plan produces: the score would be ±0.49 q."""
    X = _rows(cancer[0])
    servicer = attacker[0]
    bits = servicer.scorer.plans[COLUMN].reply_bits
    delta = int(0.49 * 2**bits)
    unit = _score_unit(servicer)

    s, scores = _run(attacker, X, delta=delta, protect=False)  # positive control
    np.testing.assert_array_equal(np.rint(scores / (delta * unit)).astype(np.int64), s[:N_ROWS])

    servicer.delta = delta
    with heml.Client(attacker[1], timeout=30, retries=0) as client:
        model = client.model("cancer")
        twin = client.model("cancer")  # a second handle on the same key
        params = model.info.plans[COLUMN].params
        old_key = model._codec.keys.get(params).s
        before = servicer.calls
        with pytest.raises(ReplyRejected, match="outside the range the model's plan allows"):
            model.decision_function(X, layout="column")
        # the rejection is a bit the attacker could learn from: one per key, not one per call
        servicer.delta = 1
        for handle in (model, twin):
            with pytest.raises(ReplyRejected, match="key is retired"):
                handle.decision_function(X.iloc[:5], layout="column")
        assert servicer.calls == before + 1
        fresh = client.model("cancer")  # a new handle derives a new key and works
        assert np.mean(fresh._codec.keys.get(params).s == old_key) < 0.4
        fresh.decision_function(X.iloc[:5], layout="column")


def test_one_value_just_outside_the_range_is_enough_to_reject(attacker, cancer):
    """The check is on every value: a reply that is honest-looking except at s_p ≠ 0."""
    X = _rows(cancer[0])
    servicer = attacker[0]
    bits = servicer.scorer.plans[COLUMN].reply_bits
    # offset + Δ·s_p lands just above RANGE_FRACTION·q only where s_p = 1
    offset = int((RANGE_FRACTION - 0.01) * 2**bits)
    delta = int(0.02 * 2**bits)
    s, scores = _run(attacker, X, delta=delta, offset=offset, protect=False)
    assert np.any(s[:N_ROWS] == 1)  # unprotected: the out-of-range values come back
    assert scores.max() / _score_unit(servicer) > RANGE_FRACTION * 2**bits
    with pytest.raises(ReplyRejected):
        _run(attacker, X, delta=delta, offset=offset, protect=True)
    # the same offset with a smaller Δ stays inside at every s_p: accepted
    _run(attacker, X, delta=delta // 4, offset=offset, protect=True)


def test_limit_a_shift_of_the_score_within_range_is_not_detectable(attacker, cancer):
    """What the guards cannot do (docs/security.md): a server that shifts each score by
    Δ·s_p with Δ far above the flood but inside the range sends a reply no client can tell
    from another model's. Such scores reveal s to whoever sees them; keep decrypted results
    away from the server. This pins the documented limit: it fails if a guard ever closes it."""
    X = _rows(cancer[0])
    servicer = attacker[0]
    plan = servicer.scorer.plans[COLUMN]
    unit = _score_unit(servicer)
    delta = math.ceil(64 * flood_bound(plan) / unit)
    s, scores = _run(attacker, X, delta=delta, protect=True)
    guess = np.rint(scores / (delta * unit)).astype(np.int64)
    assert np.mean(guess == s[:N_ROWS]) == 1.0


def test_a_reply_with_more_ciphertexts_than_the_request_needs_is_rejected(attacker, cancer):
    X = _rows(cancer[0])
    _run(attacker, X, delta=1, protect=True)  # the right count passes
    with pytest.raises(ReplyRejected, match="expected 1 replies, got 2"):
        _run(attacker, X, delta=1, protect=True, extra=1)
    with pytest.raises(ReplyRejected, match="expected 1 replies, got 0"):
        _run(attacker, X, delta=1, protect=True, extra=-1)


# ---------------------------------------------------------------------- one key per (server, model)
def _decrypt_with(s: np.ndarray, blob: bytes, params) -> np.ndarray:
    """What a holder of the ternary s reads from an uploaded ciphertext: m + e (centered)."""
    from heml.he import kernels, modmath, prng
    from heml.he.keys import secret_key_from_ternary

    c0, seed = wire.unpack_ciphertext(blob, params.n, params.q)
    a = prng.expand_seed(seed, params.n, params.q)
    key = secret_key_from_ternary(params, s)
    ker = kernels.for_params(params)
    plain = ker.intt(modmath.add_mod(c0, ker.mul_rows(a[None], key.s_ntt[0])[0], params.q))
    v = plain.astype(np.int64)
    return np.where(v > params.q // 2, v - params.q, v)


def test_a_key_one_server_recovers_opens_nothing_sent_to_another(attacker, cancer, tmp_path):
    """The attacker recovers the key it served (crafted replies, unprotected client), then
    reads a ciphertext the same client sent elsewhere. Positive control: one key for all
    servers (the SDK before per-peer derivation) gives the other server's features away."""
    from heml.he.codec import ClientCodec
    from heml.he.keys import KeySet

    X = _rows(cancer[0])
    servicer, target = attacker
    unit = _score_unit(servicer)
    other = target.replace("127.0.0.1", "localhost")  # another server identity, same port
    keys = KeySet.open(tmp_path / "client.keys")
    servicer.delta, servicer.offset, servicer.extra_replies = 1, 0, 0
    for shared in (True, False):
        with heml.Client(target, keys=keys, retries=0) as client:
            model = client.model("cancer")
            info = model.info
            if shared:  # the old SDK: every model on every server used keys.get(params)
                model._codec = ClientCodec(info.plans, info.n_features, info.n_outputs, keys)
            model._codec.protect = False
            recovered = np.rint(model.decision_function(X, layout="column") / unit)
        with heml.Client(other, keys=keys, retries=0) as client:
            model = client.model("cancer")
            if shared:
                model._codec = ClientCodec(info.plans, info.n_features, info.n_outputs, keys)
            plan = info.plans[COLUMN]
            z = np.random.default_rng(4).uniform(-1, 1, size=(N_ROWS, info.n_features))
            block = model._codec.blocks(N_ROWS, COLUMN)[0]
            (first, *_rest) = model._codec.encrypt(z, block)  # feature 0 of every sample
        read = _decrypt_with(recovered.astype(np.int8), first, plan.params)
        want = np.rint(np.ldexp(z[:, 0], plan.log2_scale_x))
        close = np.abs(read[:N_ROWS] - want) <= 21  # within the encryption noise
        if shared:
            assert close.all()  # the features sent to the other server, in the clear
        else:
            assert close.mean() < 0.01, close.mean()


def test_derived_keys_are_per_server_and_model_stable_and_uniform(tmp_path):
    from heml.he.keys import KeySet, derive_ternary, peer_label
    from heml.he.scoring import default_layout_params

    params = default_layout_params()[COLUMN]
    path = tmp_path / "k.keys"
    keys = KeySet.open(path)
    s = keys.for_peer("h:1", "cancer").get(params).s
    again = KeySet.load(path).for_peer("H:1", "cancer").get(params).s  # host names: any case
    np.testing.assert_array_equal(s, again)
    for other in (
        keys.for_peer("h:2", "cancer"),
        keys.for_peer("h:1", "wine"),
        KeySet().for_peer("h:1", "cancer"),
    ):
        assert np.mean(other.get(params).s == s) < 0.4  # independent keys agree 1/3 of the time
    counts = np.bincount(s.astype(np.int64) + 1, minlength=3) / s.size
    np.testing.assert_allclose(counts, 1 / 3, atol=0.03)
    seed = bytes(32)
    np.testing.assert_array_equal(
        derive_ternary(seed, peer_label("h:1", "m"), params),
        derive_ternary(seed, peer_label("h:1", "m"), params),
    )
    # retiring a key (after a rejected reply) derives a new one, also after reloading the file
    keys.retire("h:1", "cancer")
    fresh = KeySet.load(path).for_peer("h:1", "cancer").get(params).s
    assert np.mean(fresh == s) < 0.4


def test_derived_keys_are_real_seal_keys(tmp_path):
    """SEAL decrypts heml's encryption under a derived key, and makes its public key."""
    import tenseal.sealapi as seal

    from heml.he import kernels, prng, seal_bridge
    from heml.he.encrypt import encrypt_coefficients
    from heml.he.keys import KeySet
    from heml.he.private import default_privacy_params
    from heml.he.scoring import default_layout_params

    keys = KeySet().for_peer("h:1", "m")
    for params in default_layout_params().values():
        key = keys.get(params)
        assert set(np.unique(key.s)) == {-1, 0, 1}
        message = np.arange(params.n, dtype=np.int64) * 1000
        (blob,) = encrypt_coefficients(key, message[None])
        c0, seed = wire.unpack_ciphertext(blob, params.n, params.q)
        a = prng.expand_seed(seed, params.n, params.q)
        ct = seal_bridge.ciphertext_from_words(params, np.stack([c0, a]), ntt=True)
        plain = seal.Plaintext()
        seal.Decryptor(params.context, key.seal_key).decrypt(ct, plain)  # SEAL's decryption
        words = kernels.for_params(params).intt(seal_bridge.plaintext_words_serialized(plain))
        v = words[: params.n].astype(np.int64)
        centered = np.where(v > params.q // 2, v - params.q, v)
        assert np.abs(centered - message).max() <= prng.ERROR_COINS
    private = keys.get(default_privacy_params())
    from heml.he.encrypt import public_key_p0
    from heml.he.private import KEY_NONCE_BYTES

    assert len(public_key_p0(private, bytes(KEY_NONCE_BYTES))) > 0


def test_a_reply_of_the_wrong_size_is_rejected(attacker, cancer):
    X = _rows(cancer[0])
    servicer = attacker[0]
    try:
        servicer.cut_bytes = 1
        with pytest.raises(ReplyRejected, match="reply has .* bytes, expected"):
            _run(attacker, X, delta=1, protect=True)
    finally:
        servicer.cut_bytes = 0


def test_a_key_file_from_an_older_heml_gets_a_seed_and_keeps_its_keys(tmp_path):
    import json

    from heml.he.keys import KeySet
    from heml.he.scoring import default_layout_params

    params = default_layout_params()[COLUMN]
    old = KeySet()
    old.get(params)  # what heml wrote before: SEAL keys per parameter set, no seed
    path = tmp_path / "old.keys"
    old.save(path)
    doc = json.loads(path.read_text())
    del doc["master_seed"], doc["retired"]
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)

    first = KeySet.open(path)
    upgraded = json.loads(path.read_text())
    assert len(base64.b64decode(upgraded["master_seed"])) == 32
    assert upgraded["keys"] == doc["keys"]  # an older heml can still read its keys
    assert (path.stat().st_mode & 0o777) == 0o600
    again = KeySet.open(path)
    np.testing.assert_array_equal(
        first.for_peer("h:1", "m").get(params).s, again.for_peer("h:1", "m").get(params).s
    )
    np.testing.assert_array_equal(again.get(params).s, old.get(params).s)
    for bad in ("AAAA", "not base64!"):
        path.write_text(json.dumps({**doc, "master_seed": bad}))
        with pytest.raises(KeyFileError, match="master seed"):
            KeySet.load(path)
