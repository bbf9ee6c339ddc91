"""Known-answer vectors for docs/protocol.md, computed by the Python SDK and server code.

``python -m heml._vectors [--out DIR]`` writes docs/vectors/*.json; ``--check`` compares them
with what this code computes now (tests/test_protocol_vectors.py does the same), so any drift
in the wire format fails. Everything is deterministic: seeds, secret keys and noise keys are
fixed byte strings, the models are fixed numbers, and the server's replies are deterministic
functions of the uploads.

Byte strings are hex. Word arrays named ``*_u64`` are hex of little-endian uint64 words (8
bytes each); ``*_sha256`` is the sha256 of the named bytes when the bytes themselves would
only bloat the file (ciphertexts: an implementation recomputes them and compares digests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from .he import column as column_layout
from .he import kernels, modmath, prng, row, wire
from .he.codec import ClientCodec
from .he.decrypt import Decryptor
from .he.encrypt import encrypt_coefficients
from .he.keys import KeySet, _label_id
from .he.params import HEParams, default_params
from .he.plan import COLUMN, ROW, RowGeometry, flood_bound
from .he.scoring import Block, ServerScorer
from .links import probabilities
from .preprocessing import Bounds

VECTOR_DIR = Path(__file__).resolve().parent.parent / "docs" / "vectors"
FORMAT = "heml-protocol-vectors"
VERSION = 1
TOLERANCE = 1e-4  # heml.model.DEFAULT_TOLERANCE


def _label(name: str, n: int = 32) -> bytes:
    """A fixed byte string derived from a label (the vectors' only source of 'randomness')."""
    return hashlib.sha256(f"heml-vectors/{name}".encode()).digest()[:n]


def _u64(words: np.ndarray) -> str:
    return np.ascontiguousarray(words, dtype="<u8").tobytes().hex()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FixedKey:
    """A secret key given by its ternary coefficients s (SEAL keys cannot be seeded); it offers
    what encryption and decryption read from heml.he.keys.SecretKey."""

    def __init__(self, params: HEParams, s: np.ndarray) -> None:
        self.params = params
        self.s = np.asarray(s, dtype=np.int8)
        words = np.where(self.s < 0, np.uint64(params.q - 1), self.s.astype(np.uint64))
        self.s_ntt = kernels.for_params(params).ntt(words)[None, :]

    @property
    def primes(self) -> tuple[int, ...]:
        return (self.params.q,)


def fixed_secret(name: str, n: int) -> np.ndarray:
    """Ternary coefficients from AES-256-CTR under a labelled key: byte % 3 - 1 over bytes
    below 255 (uniform on {-1, 0, 1}, as SEAL's key generation)."""
    raw = np.frombuffer(prng.keystream(_label(name), 4 * n), dtype=np.uint8)
    raw = raw[raw < 255][:n]
    return (raw % 3).astype(np.int8) - 1


# ---------------------------------------------------------------------- primitives
def seed_expansion() -> dict:
    cases = []
    for label, n, q in (
        ("n2048", 2048, default_params(2048).q),
        ("n4096", 4096, default_params(4096).q),
        # a 16-bit prime rejects ~37% of the masked words: exercises the replacement order
        ("small-prime", 16, 40961),
    ):
        seed = _label(f"seed/{label}")
        a = prng.expand_seed(seed, n, q)
        cases.append(
            {
                "name": label,
                "seed": seed.hex(),
                "n": n,
                "q": str(q),
                "keystream_first_64": prng.keystream(seed, 64).hex(),
                "a_u64": _u64(a),
            }
        )
    return {"description": "a = expand(seed) (docs/protocol.md, Seed expansion)", "cases": cases}


def noise() -> dict:
    key = _label("noise/key")
    e = prng.sample_error((64,), key=key)
    return {
        "description": "centered binomial noise from AES-256-CTR under a fixed key",
        "key": key.hex(),
        "count": 64,
        "e": [int(v) for v in e],
    }


def ntt() -> dict:
    cases = []
    for n in (2048, 4096):
        params = default_params(n)
        x = np.arange(n, dtype=np.uint64) * np.uint64(12345) % np.uint64(params.q)
        cases.append(
            {
                "n": n,
                "q": str(params.q),
                "psi": str(modmath.minimal_primitive_root(n, params.q)),
                "input": "x_i = 12345 * i mod q",
                "output_u64": _u64(kernels.for_params(params).ntt(x)),
            }
        )
    return {"description": "SEAL's negacyclic NTT (bit-reversed order)", "cases": cases}


def encryption() -> dict:
    params = default_params(2048)
    n, q = params.n, params.q
    s = fixed_secret("secret/n2048", n)
    key = FixedKey(params, s)
    seed, noise_key = _label("encrypt/seed"), _label("encrypt/noise")
    m = (np.arange(n, dtype=np.int64) * 7919) % 2001 - 1000  # fixed message in [-1000, 1000]
    (blob,) = encrypt_coefficients(key, m[None, :], seeds=[seed], noise_key=noise_key)
    c0, got_seed = wire.unpack_ciphertext(blob, n, q)
    e = prng.sample_error((1, n), key=noise_key)[0]
    # check: c0 + a·NTT(s) is NTT(m + e)
    ker = kernels.for_params(params)
    a = prng.expand_seed(seed, n, q)
    plain = ker.intt(modmath.add_mod(c0, ker.mul_rows(a[None, :], key.s_ntt[0])[0], q))
    if not np.array_equal(plain, modmath.lift_small(m + e, q)) or got_seed != seed:
        raise AssertionError("encryption vector does not decrypt to m + e")
    return {
        "description": "c0 = NTT(m + e) - a * NTT(s) mod q; wire = c0 as 7-byte words + seed",
        "n": n,
        "q": str(q),
        "s": [int(v) for v in s],
        "s_ntt_u64": _u64(key.s_ntt[0]),
        "message": "m_i = (7919 * i mod 2001) - 1000",
        "seed": seed.hex(),
        "noise_key": noise_key.hex(),
        "e_first_16": [int(v) for v in e[:16]],
        "c0_u64": _u64(c0),
        "ciphertext_sha256": _sha(blob),
        "ciphertext_bytes": len(blob),
    }


# ---------------------------------------------------------------------- requests and replies
def _plan_dict(plan) -> dict:
    d = plan.to_dict()
    d["q"] = str(d["q"])
    return d


def _scored(
    layout: str,
    name: str,
    coef: np.ndarray,
    intercept: np.ndarray,
    bounds: Bounds,
    X: np.ndarray,
    link: str,
    s: int,
) -> dict:
    scorer = ServerScorer(coef, intercept, bounds.center, bounds.half_width, TOLERANCE)
    plan = scorer.plans[layout]
    params = plan.params
    k, d = coef.shape
    n = X.shape[0]
    key = FixedKey(params, fixed_secret(f"secret/n{params.n}", params.n))
    Z = bounds.normalize(X)
    if layout == COLUMN:
        coeffs = column_layout.encode(Z, plan)
        shift = 0
    else:
        geo = RowGeometry(params.n, d, k, plan.digits, s)
        coeffs = row.encode(Z, plan, geo)  # one sample group (n ≤ s)
        shift = row.extra_scale_bits(plan)
    seeds = [_label(f"{name}/seed/{i}") for i in range(coeffs.shape[0])]
    noise_key = _label(f"{name}/noise")
    cts = encrypt_coefficients(key, coeffs, shift, seeds=seeds, noise_key=noise_key)
    replies = scorer.evaluate(layout, n, s, cts)
    # decode through the SDK's own path, before its malicious-server guards: the range check
    # is deterministic (and passes here), the flooding adds fresh noise on [-F, F] afterwards
    codec = ClientCodec(scorer.plans, d, k, KeySet({params: key}), protect=False)
    scores = codec.decrypt(replies, Block(0, n, layout, s))
    guarded = ClientCodec(scorer.plans, d, k, KeySet({params: key}))
    flooded = guarded.decrypt(replies, Block(0, n, layout, s))
    if np.max(np.abs(flooded - scores)) > flood_bound(plan):
        raise AssertionError(f"{name}: flooding moved a score by more than F")
    dec = Decryptor(key)
    decrypted = []
    for i, blob in enumerate(replies):
        if layout == COLUMN:
            c0, c1 = wire.unpack_reply(blob, n, params.n, plan.reply_bits)
            v = dec.leading(c0, c1, n, plan.reply_bits)
            positions = list(range(n))
        else:
            pos = geo.output_positions(i).reshape(-1)
            c0, c1 = wire.unpack_reply(blob, pos.size, params.n, plan.reply_bits)
            v = dec.at_positions(c0, c1, pos, plan.reply_bits)
            positions = [int(p) for p in pos]
        decrypted.append({"positions": positions, "signed": [int(x) for x in v]})
    plain = X @ coef.T + intercept
    if np.max(np.abs(scores - plain)) > plan.error_bound:
        raise AssertionError(f"{name}: decrypted scores miss the plaintext beyond the bound")
    out = {
        "description": f"one {layout.upper()} block: request, the server's reply, decoding",
        "model": {
            "coef": coef.tolist(),
            "intercept": intercept.tolist(),
            "link": link,
            "bounds": {"lower": bounds.lower.tolist(), "upper": bounds.upper.tolist()},
        },
        "plan": _plan_dict(plan),
        "x": X.tolist(),
        "z": Z.tolist(),
        "n": n,
        "samples_per_ciphertext": s,
        "s": [int(v) for v in key.s],
        "message_nonzero": [[[int(i), int(c[i])] for i in np.flatnonzero(c)] for c in coeffs],
        "seeds": [sd.hex() for sd in seeds],
        "noise_key": noise_key.hex(),
        "ciphertexts": [c.hex() for c in cts],
        "ciphertexts_sha256": [_sha(c) for c in cts],
        "ciphertext_bytes": len(cts[0]),
        "replies": [r.hex() for r in replies],
        "decrypted": decrypted,
        "scores": scores.tolist(),
        "score_flood_bound": flood_bound(plan),
        "plaintext_scores": plain.tolist(),
    }
    if link != "identity":
        out["probabilities"] = probabilities(link, scores).tolist()
    return out


def row_vector() -> dict:
    """Multiclass softmax model (d = 5, k = 3), two samples in one ROW ciphertext (s = 2)."""
    coef = np.array(
        [
            [0.75, -1.25, 0.5, 2.0, -0.125],
            [-0.5, 0.25, 1.5, -1.0, 0.875],
            [0.1, 0.2, -0.3, 0.4, -0.5],
        ]
    )
    intercept = np.array([0.25, -0.5, 0.125])
    bounds = Bounds(np.full(5, -3.0), np.full(5, 3.0))
    X = np.array([[0.5, -1.0, 2.0, 0.0, 1.5], [-2.5, 0.75, -0.25, 3.0, -3.0]])
    return _scored(ROW, "row", coef, intercept, bounds, X, "softmax", 2)


def row_wide_vector() -> dict:
    """Multiclass (k = 4) over d = 2100 > N features: one sample in two ROW chunks, and one
    class per reply (four replies)."""
    d, k = 2100, 4
    j = np.arange(d)
    # integer formulas, no libm: the same numbers on every machine
    coef = np.stack([((j * 7919 + 104729 * c) % 2001 - 1000) / 16000 for c in range(k)])
    intercept = np.array([0.5, -0.25, 0.0, 0.125])
    bounds = Bounds(np.full(d, -1.0), np.full(d, 1.0))
    X = (((j * 31) % 2001 - 1000) / 1000)[None, :]
    return _scored(ROW, "row-wide", coef, intercept, bounds, X, "softmax", 1)


def column_vector() -> dict:
    """Regression on wide raw ranges (d = 3; weights split into digits), three samples."""
    coef = np.array([[1234.5, -987.25, 55.0]])
    intercept = np.array([100000.0])
    bounds = Bounds(np.array([0.0, -50.0, 1000.0]), np.array([10000.0, 50.0, 9000.0]))
    X = np.array([[5000.0, 10.0, 2500.0], [0.0, -50.0, 9000.0], [9999.5, 49.0, 1000.0]])
    return _scored(COLUMN, "column", coef, intercept, bounds, X, "identity", 0)


def keys() -> dict:
    """Per-(server, model) secret keys derived from a master seed (heml.he.keys.KeySet.for_peer):
    the label, then s's first coefficients and the sha256 of all n of them (one int8 each)."""
    seed = _label("keys/master-seed")
    cases = []
    for target, model, retired, n in (
        ("localhost:50051", "cancer", 0, 2048),
        ("localhost:50051", "cancer", 1, 2048),  # after one rejected reply
        (" Models.Example.COM:443 ", "wine-é", 0, 4096),  # trimmed, lower-cased, \u escaped
    ):
        params = default_params(n)
        ks = KeySet(master_seed=seed)
        for _ in range(retired):
            ks.retire(target, model)
        peer = ks.for_peer(target, model)
        s = peer.get(params).s
        cases.append(
            {
                "server": target,
                "model": model,
                "epoch": retired,
                "label": peer.label.decode(),
                "retired_id": _label_id(target, model),
                "n": n,
                "q": str(params.q),
                "s_first_32": [int(v) for v in s[:32]],
                "s_sha256": _sha(s.astype(np.int8).tobytes()),
            }
        )
    return {
        "description": "keys per (server, model): HKDF-SHA256 of a master seed, then SHAKE-256",
        "master_seed": seed.hex(),
        "cases": cases,
    }


def links() -> dict:
    scores_bin = np.array([[-2.0], [0.0], [3.5]])
    scores_multi = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 50.0]])
    return {
        "description": "links applied to decrypted scores (binary logistic gives (n, 2))",
        "logistic": {"scores": scores_bin.tolist(), "probabilities": _p("logistic", scores_bin)},
        "softmax": {"scores": scores_multi.tolist(), "probabilities": _p("softmax", scores_multi)},
    }


def _p(link: str, scores: np.ndarray) -> list:
    return probabilities(link, scores).tolist()


GENERATORS = {
    "seed_expansion": seed_expansion,
    "noise": noise,
    "ntt": ntt,
    "encryption": encryption,
    "row": row_vector,
    "row_wide": row_wide_vector,
    "column": column_vector,
    "links": links,
    "keys": keys,
}


def generate() -> dict[str, dict]:
    """Every vector file's content, by file stem."""
    return {
        name: {"format": FORMAT, "version": VERSION, "vector": name, **fn()}
        for name, fn in GENERATORS.items()
    }


def dumps(doc: dict) -> str:
    """JSON with one key per line and every list of numbers (or of short lists) on one line."""

    def render(value, depth: int) -> str:
        pad = " " * depth
        if isinstance(value, dict):
            items = [f"{pad} {json.dumps(k)}: {render(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(value, list) and any(isinstance(v, dict | str) for v in value):
            items = [pad + " " + render(v, depth + 1) for v in value]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(value)

    return render(doc, 0) + "\n"


def same(a, b, rel: float = 1e-12) -> bool:
    """Equal vector documents: everything exact except floats, which may differ in the last
    bits between machines (BLAS kernels and libm's exp vary with the CPU)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(1.0, abs(a), abs(b))
    return type(a) is type(b) and a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heml._vectors", description=__doc__)
    parser.add_argument("--out", type=Path, default=VECTOR_DIR, help="folder of vector files")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    docs = generate()
    stale = []
    for name, doc in docs.items():
        path = args.out / f"{name}.json"
        if args.check:
            if not path.exists() or not same(json.loads(path.read_text()), doc):
                stale.append(path.name)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(doc))
    if stale:
        print(f"stale vectors: {', '.join(stale)}; run python -m heml._vectors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
