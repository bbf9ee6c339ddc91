"""The SDK's reply validation in process: ClientCodec.decrypt (issue 18, second round).

Promises (docs/security.md, heml.he.codec, heml.he.decrypt): a block's replies are exactly as
many as an honest server sends (k·T for COLUMN, ceil(n/s)·groups for ROW), else
InvalidCiphertext; every decrypted row value beyond RANGE_FRACTION·q is refused, in every
layout and at every position; every returned score carries fresh uniform noise on
[−flood_bound, flood_bound) from os.urandom; ``protect=False`` (the attack tests' positive
controls only) switches both off. The replies here come from heml's own server code (honest)
or are crafted from it (c1 = 0, so that a reply decrypts to exactly its c0).
"""

from __future__ import annotations

import numpy as np
import pytest

import heml
from heml.errors import InvalidCiphertext, ReplyRejected
from heml.he import decrypt as decrypt_module
from heml.he import wire
from heml.he.codec import ClientCodec, recombine
from heml.he.keys import KeySet, peer_label
from heml.he.plan import COLUMN, ROW, flood_bound
from heml.he.scoring import Block, ServerScorer

D, K = 6, 2


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(K, D)), rng.normal(size=K)
    center, hw = np.zeros(D), np.full(D, 2.0)
    server = ServerScorer(W, b, center, hw, 1e-4)
    codec = ClientCodec(server.plans, D, K, KeySet())
    Z = rng.uniform(-1, 1, size=(40, D))
    return server, codec, Z, Z @ (W * hw).T + b


def _honest(server, codec, Z, block):
    cts = codec.encrypt(Z[block.start : block.stop], block)
    return server.evaluate(block.layout, block.n, block.s, cts)


def _blocks(codec, Z):
    # 40 samples at 8 per ciphertext: five sample groups, each with its own replies
    return [Block(0, 40, ROW, 8), Block(0, 40, COLUMN, 0)]


def test_the_reply_count_is_exactly_what_an_honest_server_sends(setup):
    server, codec, Z, _ = setup
    for block in _blocks(codec, Z):
        replies = _honest(server, codec, Z, block)
        plan = codec.plans[block.layout]
        if block.layout == COLUMN:
            assert codec.reply_count(block) == K * plan.digits == len(replies)
        else:
            geo = codec._row_geometry(block.s)
            assert codec.reply_count(block) == -(-block.n // block.s) * geo.groups
            assert len(replies) == codec.reply_count(block)
        codec.decrypt(replies, block)
        n = len(replies)
        for wrong in (replies[:-1], replies + replies[-1:], []):
            with pytest.raises(InvalidCiphertext, match=f"^expected {n} replies, got {len(wrong)}"):
                codec.decrypt(wrong, block)


def _crafted(codec, block, value_at_first: float):
    """Replies that decrypt (c1 = 0) to zero everywhere except value_at_first·q at the first
    output position of the first reply."""
    plan = codec.plans[block.layout]
    bits, n_coeffs = plan.reply_bits, plan.params.n
    out = []
    for r in range(codec.reply_count(block)):
        if block.layout == COLUMN:
            positions = block.n
        else:
            geo = codec._row_geometry(block.s)
            positions = geo.output_positions(r % geo.groups).size
        c0 = np.zeros(positions, dtype=np.int64)
        if r == 0:
            c0[0] = round(value_at_first * 2**bits)
        words = (c0 % (1 << bits)).astype(np.uint64)
        out.append(wire.pack_reply(words, np.zeros(n_coeffs, dtype=np.uint64), bits))
    return out


@pytest.mark.parametrize("layout", [ROW, COLUMN])
@pytest.mark.parametrize("sign", [1, -1])
def test_one_value_beyond_the_range_is_refused_one_just_inside_is_not(setup, layout, sign):
    _server, codec, Z, _ = setup
    block = next(b for b in _blocks(codec, Z) if b.layout == layout)
    frac = decrypt_module.RANGE_FRACTION
    inside = codec.decrypt(_crafted(codec, block, sign * (frac - 0.001)), block)
    assert inside.shape == (block.n, K)
    with pytest.raises(InvalidCiphertext, match=r"^1 decrypted value\(s\) outside the range"):
        codec.decrypt(_crafted(codec, block, sign * (frac + 0.001)), block)
    codec.protect = False
    try:  # the positive control's switch: nothing is checked
        raw = codec.decrypt(_crafted(codec, block, sign * (frac + 0.001)), block)
    finally:
        codec.protect = True
    plan = codec.plans[layout]
    want = sign * (frac + 0.001) * plan.params.q / (plan.scale_x * plan.scale_w)
    assert raw[0, 0] == pytest.approx(want, rel=1e-3)


def test_every_score_is_flooded_from_os_urandom_within_the_flood_bound(setup, monkeypatch):
    server, codec, Z, want = setup
    for block in _blocks(codec, Z):
        replies = _honest(server, codec, Z, block)
        plan = codec.plans[block.layout]
        bound = flood_bound(plan)
        assert bound > 0
        codec.protect = False
        try:
            raw = codec.decrypt(replies, block)
        finally:
            codec.protect = True
        dec = codec._decryptor(plan.params)
        assert raw.shape == (block.n, K)
        np.testing.assert_allclose(raw, want[block.start : block.stop], atol=plan.error_bound)
        # all-zero words are the draw u = 0: noise −bound on every score; all-ones u → 1
        for byte, noise in ((0, -bound), (255, bound * (1 - 2.0**-52))):
            monkeypatch.setattr(decrypt_module.os, "urandom", lambda k, b=byte: bytes([b]) * k)
            got = codec.decrypt(replies, block)
            np.testing.assert_allclose(got - raw, noise, rtol=0, atol=abs(noise) * 1e-6)
        monkeypatch.undo()
        one, two = codec.decrypt(replies, block), codec.decrypt(replies, block)
        assert np.all(one != two)  # fresh noise for every score
        assert np.abs(one - raw).max() <= bound
        assert dec.q == plan.params.q
        np.testing.assert_allclose(one, want[block.start : block.stop], atol=plan.error_bound)


def test_recombine_is_the_digit_sum_over_the_scales(setup):
    _server, codec, _Z, _ = setup
    plan = codec.plans[COLUMN]

    class Plan:
        digits, digit_bits = 3, 4
        scale_x, scale_w = 2.0, 8.0

    V = np.array([[1.0, 2.0, 3.0, -1.0, 0.0, 5.0]])  # k = 2 classes of T = 3 digits
    got = recombine(V, Plan, 2)
    assert got.tolist() == [[(1 + 2 * 16 + 3 * 256) / 16, (-1 + 5 * 256) / 16]]
    assert plan.digits >= 1


def test_the_decryptor_keeps_at_most_64_position_sets_and_stays_exact(setup):
    """The client's cache of product rows is a memory bound: 64 position sets, least recently
    added out first; decryption after an eviction is unchanged."""
    _server, codec, _Z, _ = setup
    plan = codec.plans[ROW]
    dec = decrypt_module.Decryptor(codec.keys.get(plan.params))
    rng = np.random.default_rng(11)
    n, bits = plan.params.n, plan.reply_bits
    c1 = rng.integers(0, 1 << bits, size=n, dtype=np.uint64)
    c0 = rng.integers(0, 1 << bits, size=3, dtype=np.uint64)
    first = dec.at_positions(c0, c1, np.array([0, 1, 2]), bits)
    for i in range(1, 70):
        dec.at_positions(c0, c1, np.array([i, i + 1, i + 2]), bits)
        assert len(dec._rows_cache) == min(i + 1, 64)
    assert np.array([0, 1, 2]).tobytes() not in dec._rows_cache  # the oldest went first
    np.testing.assert_array_equal(dec.at_positions(c0, c1, np.array([0, 1, 2]), bits), first)
    # the same values as the full negacyclic product at those positions
    full = dec.leading(np.zeros(n, dtype=np.uint64), c1, n, bits)
    mask = (1 << bits) - 1
    want = [((int(c) + int(full[p])) & mask) for c, p in zip(c0, range(3), strict=True)]
    want = [w - (1 << bits) if w >= 1 << (bits - 1) else w for w in want]
    assert first.tolist() == want


@pytest.mark.parametrize("bits", [24, 56, 64])
def test_decrypted_words_are_read_as_signed_residues_modulo_2_to_the_bits(bits):
    """Words modulo 2^bits -> the representative in [−2^(bits−1), 2^(bits−1)); bits above
    `bits` are ignored (64 bits: two's complement)."""
    top = 1 << bits
    values = [0, 1, top // 2 - 1, top // 2, top - 1]
    words = np.array([(v + (top if bits < 64 else 0)) % (1 << 64) for v in values], np.uint64)
    got = decrypt_module._signed(words, bits).tolist()
    assert got == [0, 1, top // 2 - 1, -(top // 2), -1]


# ---------------------------------------------------------------------- the SDK: key retirement
def test_each_retirement_derives_a_key_never_used_before(tmp_path):
    """docs/protocol.md: a derived key's label is [target, model, epoch] with epoch = the
    number of keys retired for (target, model); retiring is saved to the key file."""
    path = tmp_path / "k.keys"
    keys = KeySet.open(path)
    seen = [keys.for_peer(" H:1", "m").label]
    assert seen[0] == peer_label("h:1", "m", 0)
    for count in (1, 2, 3):
        keys.retire("h:1", "m")
        label = keys.for_peer("h:1", "m").label
        assert label == peer_label("h:1", "m", count) and label not in seen
        assert KeySet.load(path).for_peer("h:1", "m").label == label
        seen.append(label)
    assert keys.for_peer("h:1", "other").label == peer_label("h:1", "other", 0)


@pytest.fixture(scope="module")
def crafting(cancer):
    """A gRPC server in this process that publishes a real model and answers with crafted
    replies (tests/test_security_malicious_server.py's attacker)."""
    from tests.test_security_malicious_server import crafting_server

    with crafting_server(heml.export(cancer[2], name="cancer")) as pair:
        yield pair


def test_a_rejected_reply_retires_the_key_for_every_handle_and_says_so(crafting, cancer, tmp_path):
    servicer, target = crafting
    bits = servicer.scorer.plans[COLUMN].reply_bits
    X = cancer[0].iloc[:5]
    path = tmp_path / "k.keys"
    keys = KeySet.open(path)
    servicer.delta, servicer.offset, servicer.extra_replies = 0, int(0.49 * 2**bits), 0
    with heml.Client(target, keys=keys, timeout=30, retries=0) as client:
        model, twin = client.model("cancer"), client.model("cancer")
        with pytest.raises(ReplyRejected) as info:
            model.decision_function(X, layout="column")
        assert info.value.code == "DATA_LOSS"
        assert info.value.details.startswith("5 decrypted value(s) outside the range")
        text = str(info.value)
        assert text.startswith(f"{target}: model cancer: 5 decrypted value(s) outside the range")
        assert text.endswith(
            "; this key is retired (a new client.model() handle derives a fresh one)"
        )
        assert KeySet.load(path).for_peer(target, "cancer").label == peer_label(target, "cancer", 1)
        servicer.offset = 0  # an honest-looking reply now: still refused, no call made
        calls = servicer.calls
        for handle, why in (
            (model, "5 decrypted value(s)"),
            (twin, "another handle of this model rejected a reply"),
        ):
            with pytest.raises(ReplyRejected) as info:
                handle.decision_function(X, layout="column")
            assert info.value.code == "DATA_LOSS"
            text = str(info.value)
            head = f"{target}: model cancer sent a reply that failed the client's checks ({why}"
            assert text.startswith(head)
            assert text.endswith("); its key is retired: get a new handle with client.model()")
        assert servicer.calls == calls
        fresh = client.model("cancer")
        fresh.decision_function(X, layout="column")
        assert fresh.last_call.samples == 5 and servicer.calls == calls + 1
