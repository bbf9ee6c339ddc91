"""docs/vectors/*.json: the committed known-answer vectors are what the SDK computes now, and
they agree with docs/protocol.md read literally (recomputed here from the document's formulas
with Python integers and AES from ``cryptography``, not through heml.he)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from heml import _vectors

DOCS = _vectors.VECTOR_DIR


@pytest.fixture(scope="module")
def generated() -> dict[str, dict]:
    return _vectors.generate()


def load(name: str) -> dict:
    return json.loads((DOCS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(_vectors.GENERATORS))
def test_committed_vectors_match_the_sdk(generated, name):
    path = DOCS / f"{name}.json"
    assert _vectors.same(json.loads(path.read_text()), generated[name]), (
        f"{path.name} drifted from the SDK; if the protocol changed on purpose, run "
        "python -m heml._vectors and bump the protocol version"
    )


def test_comparison_is_exact_except_for_the_last_bits_of_floats():
    doc = {"a": [1, 2], "b": "x", "c": [[0.1, 2.0]]}
    assert _vectors.same(doc, {"a": [1, 2], "b": "x", "c": [[0.1 * (1 + 1e-15), 2.0]]})
    assert not _vectors.same(doc, {"a": [1, 3], "b": "x", "c": [[0.1, 2.0]]})
    assert not _vectors.same(doc, {"a": [1, 2], "b": "y", "c": [[0.1, 2.0]]})
    assert not _vectors.same(doc, {"a": [1, 2], "b": "x", "c": [[0.1 * (1 + 1e-9), 2.0]]})
    assert not _vectors.same(doc, {"a": [1, 2], "b": "x", "c": [[0.1, 2.0, 3.0]]})
    assert not _vectors.same(doc, {"a": [1, 2], "b": "x"})
    assert not _vectors.same({"n": 1}, {"n": 1.0})


def test_check_mode_reports_a_drifted_file(tmp_path, capsys):
    assert _vectors.main(["--out", str(tmp_path)]) == 0
    assert _vectors.main(["--out", str(tmp_path), "--check"]) == 0
    doc = json.loads((tmp_path / "row.json").read_text())
    doc["replies"][0] = doc["replies"][0][:-2] + ("00" if doc["replies"][0][-2:] != "00" else "01")
    (tmp_path / "row.json").write_text(_vectors.dumps(doc))
    assert _vectors.main(["--out", str(tmp_path), "--check"]) == 1
    assert "row.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- the document, literally
def keystream(key: bytes, nbytes: int) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(nbytes))


def words_le(data: bytes, size: int) -> list[int]:
    return [int.from_bytes(data[i : i + size], "little") for i in range(0, len(data), size)]


def expand(seed: bytes, n: int, q: int) -> list[int]:
    stream = words_le(keystream(seed, 8 * (n + 4096)), 8)
    mask = (1 << q.bit_length()) - 1
    spare = (w & mask for w in stream[n:])
    return [w & mask if w & mask < q else next(x for x in spare if x < q) for w in stream[:n]]


def test_seed_expansion_follows_the_document():
    cases = load("seed_expansion")["cases"]
    small = next(c for c in cases if c["name"] == "small-prime")
    q = int(small["q"])
    raw = words_le(keystream(bytes.fromhex(small["seed"]), 8 * 16), 8)
    assert any(w & ((1 << q.bit_length()) - 1) >= q for w in raw)  # the case rejects words
    for case in cases:
        seed, n, q = bytes.fromhex(case["seed"]), case["n"], int(case["q"])
        assert keystream(seed, 64).hex() == case["keystream_first_64"]
        assert words_le(bytes.fromhex(case["a_u64"]), 8) == expand(seed, n, q)


def test_noise_follows_the_document():
    doc = load("noise")
    words = words_le(keystream(bytes.fromhex(doc["key"]), 8 * doc["count"]), 8)
    half = (1 << 21) - 1
    want = [(u & half).bit_count() - ((u >> 21) & half).bit_count() for u in words]
    assert doc["e"] == want
    assert all(abs(e) <= 21 for e in want)


def ntt_slot(x: list[int], q: int, psi: int, i: int) -> int:
    """Slot i of the negacyclic NTT, from its definition: x evaluated at ψ^(2·br(i) + 1)."""
    bits = len(x).bit_length() - 1
    root = pow(psi, 2 * int(format(i, f"0{bits}b")[::-1], 2) + 1, q)
    acc, p = 0, 1
    for xj in x:
        acc = (acc + xj * p) % q
        p = p * root % q
    return acc


def test_ntt_vector_is_the_negacyclic_evaluation_at_odd_powers():
    for case in load("ntt")["cases"]:
        n, q, psi = case["n"], int(case["q"]), int(case["psi"])
        assert pow(psi, n, q) == q - 1  # a primitive 2N-th root ...
        assert all(pow(psi, j, q) > psi for j in range(3, 2 * n, 2))  # ... the smallest one
        x = [12345 * i % q for i in range(n)]
        got = words_le(bytes.fromhex(case["output_u64"]), 8)
        for i in (0, 1, 2, 3, n // 2, n - 1):
            assert got[i] == ntt_slot(x, q, psi, i)


def test_encryption_vector_decrypts_to_message_plus_noise():
    doc = load("encryption")
    n, q = doc["n"], int(doc["q"])
    s = doc["s"]
    c0 = words_le(bytes.fromhex(doc["c0_u64"]), 8)
    seed = bytes.fromhex(doc["seed"])
    a = expand(seed, n, q)
    s_ntt = words_le(bytes.fromhex(doc["s_ntt_u64"]), 8)
    # c0 + a·NTT(s) = NTT(m + e): compare in the NTT domain at a few slots
    psi = int(load("ntt")["cases"][0]["psi"])
    e = words_le(keystream(bytes.fromhex(doc["noise_key"]), 8 * n), 8)
    half = (1 << 21) - 1
    e = [(u & half).bit_count() - ((u >> 21) & half).bit_count() for u in e]
    assert e[:16] == doc["e_first_16"]
    m = [(7919 * i) % 2001 - 1000 for i in range(n)]
    plain = [mi + ei for mi, ei in zip(m, e, strict=True)]
    for i in (0, 1, 777, n - 1):
        assert s_ntt[i] == ntt_slot(s, q, psi, i)
        assert (c0[i] + a[i] * s_ntt[i]) % q == ntt_slot(plain, q, psi, i)
    blob_len = 7 * n + 32
    assert doc["ciphertext_bytes"] == blob_len


def decrypt_position(c0_p: int, c1: list[int], s: list[int], p: int, bits: int) -> int:
    n = len(c1)
    acc = c0_p
    for j in range(n):
        acc += c1[j] * (s[p - j] if j <= p else -s[n + p - j])
    v = acc % (1 << bits)
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def unpack_bits(data: bytes, count: int, bits: int) -> list[int]:
    big = int.from_bytes(data, "little")
    return [(big >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


@pytest.mark.parametrize("name", ["row", "row_wide", "column"])
def test_reply_decodes_to_the_scores_as_documented(name):
    doc = load(name)
    plan, s = doc["plan"], doc["s"]
    N, q, bits = plan["n"], int(plan["q"]), plan["reply_bits"]
    T, b = plan["digits"], plan["digit_bits"]
    k = len(doc["model"]["intercept"])
    d = len(doc["z"][0])
    n = doc["n"]
    values: dict[tuple[int, int, int], float] = {}  # (sample, class, digit) -> value in units
    for g, (blob, dec) in enumerate(zip(doc["replies"], doc["decrypted"], strict=True)):
        data = bytes.fromhex(blob)
        P = len(dec["positions"])
        assert len(data) == math.ceil((P + N) * bits / 8)
        words = unpack_bits(data, P + N, bits)
        c0, c1 = words[:P], words[P:]
        signed = [decrypt_position(c0[i], c1, s, p, bits) for i, p in enumerate(dec["positions"])]
        assert signed == dec["signed"]
        if name == "column":  # reply index = class · T + digit, position = sample
            cls, t = divmod(g, T)
            for a in range(n):
                values[(a, cls, t)] = signed[a] * q / 2**bits
        else:  # one sample group: G classes per reply, replies digit-major
            ssz = doc["samples_per_ciphertext"]
            m_f = min(d, N // ssz)
            G = min(k, N // (ssz * m_f))
            per_digit = -(-k // G)
            t, first = g // per_digit, G * (g % per_digit)
            count = min(G, k - first)
            assert dec["positions"] == [
                r * ssz * m_f + a * m_f + m_f - 1 for r in range(count) for a in range(ssz)
            ]
            for idx, v in enumerate(signed):
                r, a = divmod(idx, ssz)
                if a < n:
                    values[(a, first + r, t)] = v * q / 2**bits
    scale = 2.0 ** (plan["log2_scale_x"] + plan["log2_scale_w"])
    for a in range(n):
        for c in range(k):
            score = sum(2.0 ** (b * t) * values[(a, c, t)] for t in range(T)) / scale
            assert score == pytest.approx(doc["scores"][a][c], rel=1e-12, abs=1e-9)
            assert abs(score - doc["plaintext_scores"][a][c]) <= plan["error_bound"]


@pytest.mark.parametrize("name", ["row", "row_wide"])
def test_row_request_places_features_as_documented(name):
    doc = load(name)
    plan = doc["plan"]
    N, d, ssz = plan["n"], len(doc["z"][0]), doc["samples_per_ciphertext"]
    m = min(d, N // ssz)
    chunks = -(-d // m)
    assert len(doc["message_nonzero"]) == len(doc["ciphertexts"]) == chunks
    for c in range(chunks):
        want = {}
        for a, z in enumerate(doc["z"]):
            for i, zi in enumerate(z[c * m : (c + 1) * m]):
                v = round(zi * 2 ** plan["log2_scale_x"])
                if v:
                    want[a * m + i] = v
        assert dict(map(tuple, doc["message_nonzero"][c])) == want


def test_derived_keys_follow_the_document():
    """keys.json from the Secret key section's recipe: hmac/hashlib, not heml.he.keys."""
    doc = load("keys")
    seed = bytes.fromhex(doc["master_seed"])
    for case in doc["cases"]:
        label = json.dumps([case["server"].strip().lower(), case["model"], case["epoch"]])
        assert label == case["label"]
        info = (label + "|" + json.dumps([case["n"], [int(case["q"])]])).encode()
        prk = hmac.new(b"heml/v1 secret key derivation", seed, hashlib.sha256).digest()
        key = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
        stream = hashlib.shake_256(key).digest(4 * case["n"])
        s = [b % 3 - 1 for b in stream if b < 255][: case["n"]]
        assert s[:32] == case["s_first_32"]
        assert hashlib.sha256(bytes(v & 0xFF for v in s)).hexdigest() == case["s_sha256"]
    assert len({c["s_sha256"] for c in doc["cases"]}) == len(doc["cases"])
