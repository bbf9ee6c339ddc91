"""Expand a ciphertext seed into its uniform polynomial a, exactly as SEAL does.

A seeded symmetric ciphertext sends c0 and a 64-byte seed instead of c1 = a (half the bytes).
SEAL (4.x, TenSEAL's build) expands the seed with BLAKE2Xb in 4096-byte refills: refill i is
BLAKE2Xb(out=4096 bytes, input=uint64 counter i, key=seed). The byte stream is read as
little-endian uint64 words; a word w is accepted when w < 2^64 - (2^64 mod q) - 1 and becomes
w mod q, otherwise the next word of the stream replaces it. The result is a in NTT form.

The fast path calls the ``blake2xb`` C function exported by TenSEAL's extension module; the
portable path builds BLAKE2Xb from hashlib's BLAKE2b (about 2x slower). Both are tested
against SEAL's own ``Ciphertext.load``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os

import numpy as np

SEED_BYTES = 64
REFILL_BYTES = 4096
_U64_MAX = (1 << 64) - 1


def _ctypes_blake2xb():
    if os.environ.get("HEML_PORTABLE_PRNG") == "1":
        return None
    try:
        import _sealapi_cpp

        lib = ctypes.CDLL(_sealapi_cpp.__file__)
        fn = lib.blake2xb
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    fn.restype = ctypes.c_int
    return fn


_BLAKE2XB = _ctypes_blake2xb()


_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)


def _rotr(x: np.ndarray, n: int) -> np.ndarray:
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


def _blake2b_single_block(h: np.ndarray, m: np.ndarray, length: int) -> np.ndarray:
    """BLAKE2b of one final 128-byte block, vectorized over lanes: h (8, L), m (16, L)."""
    v = [h[i].copy() for i in range(8)] + [np.full(h.shape[1], w, dtype=np.uint64) for w in _IV]
    v[12] ^= np.uint64(length)
    v[14] ^= np.uint64(0xFFFFFFFFFFFFFFFF)
    for r in range(12):
        s = _SIGMA[r % 10]
        for i, (a, b, c, d) in enumerate(
            (
                (0, 4, 8, 12),
                (1, 5, 9, 13),
                (2, 6, 10, 14),
                (3, 7, 11, 15),
                (0, 5, 10, 15),
                (1, 6, 11, 12),
                (2, 7, 8, 13),
                (3, 4, 9, 14),
            )
        ):
            x, y = m[s[2 * i]], m[s[2 * i + 1]]
            v[a] = v[a] + v[b] + x
            v[d] = _rotr(v[d] ^ v[a], 32)
            v[c] = v[c] + v[d]
            v[b] = _rotr(v[b] ^ v[c], 24)
            v[a] = v[a] + v[b] + y
            v[d] = _rotr(v[d] ^ v[a], 16)
            v[c] = v[c] + v[d]
            v[b] = _rotr(v[b] ^ v[c], 63)
    return np.stack([h[i] ^ v[i] ^ v[i + 8] for i in range(8)])


def _refills_portable(seed: bytes, refills: int) -> np.ndarray:
    """BLAKE2Xb refills without TenSEAL's C function: hashlib for the keyed root hashes, a
    numpy BLAKE2b for the 64 leaves of every refill (hashlib cannot set depth 0)."""
    xof_len = REFILL_BYTES
    roots = np.empty((refills, 8), dtype=np.uint64)
    for i in range(refills):
        digest = hashlib.blake2b(
            i.to_bytes(8, "little"),
            digest_size=64,
            key=seed,
            fanout=1,
            depth=1,
            leaf_size=0,
            node_offset=xof_len << 32,
            node_depth=0,
            inner_size=0,
        ).digest()
        roots[i] = np.frombuffer(digest, dtype="<u8")
    leaves = xof_len // 64
    lanes = refills * leaves
    m = np.zeros((16, lanes), dtype=np.uint64)
    m[:8] = np.repeat(roots.T, leaves, axis=1)
    offsets = np.tile(np.arange(leaves, dtype=np.uint64), refills)
    h = np.tile(_IV[:, None], (1, lanes))
    h[0] ^= np.uint64(64 | (64 << 32))  # digest_length 64, leaf_length 64
    h[1] ^= offsets | np.uint64(xof_len << 32)  # node_offset, xof_length
    h[2] ^= np.uint64(64 << 8)  # inner_length 64
    with np.errstate(over="ignore"):
        out = _blake2b_single_block(h, m, 64)  # (8, lanes)
    return out.T.reshape(-1).astype("<u8").astype(np.uint64)


def stream(
    seed: bytes, nbytes: int, *, portable: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """The first ``nbytes`` (rounded up to refills) of SEAL's PRNG stream, as uint64 words."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seeds are {SEED_BYTES} bytes, got {len(seed)}")
    refills = -(-nbytes // REFILL_BYTES)
    words = refills * REFILL_BYTES // 8
    if out is not None and out.size == words and out.dtype == np.uint64 and out.flags.c_contiguous:
        buf = out
    else:
        buf = np.empty(words, dtype=np.uint64)
    if _BLAKE2XB is not None and not portable:
        counter = np.zeros(1, dtype=np.uint64)
        key = ctypes.create_string_buffer(seed, SEED_BYTES)
        base = buf.ctypes.data
        for i in range(refills):
            counter[0] = i
            rc = _BLAKE2XB(base + i * REFILL_BYTES, REFILL_BYTES, counter.ctypes.data, 8, key, 64)
            if rc != 0:
                raise RuntimeError("blake2xb failed")
    else:
        buf[:] = _refills_portable(seed, refills)
    return buf


@functools.lru_cache(maxsize=16)
def _rejection_threshold(q: int) -> int:
    return _U64_MAX - (_U64_MAX % q) - 1


def expand_seed(
    seed: bytes, n: int, q: int, *, portable: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """SEAL's ``sample_poly_uniform`` for one prime: the n NTT-form coefficients of a.

    With ``out`` (n uint64 words, contiguous; n a multiple of 512) the result is written there.
    """
    limit = _rejection_threshold(q)
    words = stream(seed, n * 8, portable=portable, out=out)
    a = words if words is out else words[:n].copy()
    rejected = np.flatnonzero(a >= np.uint64(limit))
    if rejected.size:
        # each rejected word is replaced by the next acceptable word after the first n
        pos = n
        for idx in rejected:
            while True:
                if pos >= words.size:
                    words = stream(seed, (pos + 1) * 8 + REFILL_BYTES, portable=portable)
                w = words[pos]
                pos += 1
                if w < limit:
                    a[idx] = w
                    break
    np.remainder(a, np.uint64(q), out=a)
    return a


def fast_path_available() -> bool:
    return _BLAKE2XB is not None
