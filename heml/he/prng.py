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


def _refill_portable(seed: bytes, counter: int, out: memoryview) -> None:
    """BLAKE2Xb (RFC-style XOF on BLAKE2b) of the 8-byte counter keyed by the seed."""
    xof_len = len(out)
    root = hashlib.blake2b(
        counter.to_bytes(8, "little"),
        digest_size=64,
        key=seed,
        fanout=1,
        depth=1,
        leaf_size=0,
        node_offset=xof_len << 32,
        node_depth=0,
        inner_size=0,
    ).digest()
    for i in range(0, (xof_len + 63) // 64):
        take = min(64, xof_len - 64 * i)
        block = hashlib.blake2b(
            root,
            digest_size=take,
            fanout=0,
            depth=0,
            leaf_size=64,
            node_offset=i | (xof_len << 32),
            node_depth=0,
            inner_size=64,
        ).digest()
        out[64 * i : 64 * i + take] = block


def stream(seed: bytes, nbytes: int, *, portable: bool = False) -> np.ndarray:
    """The first ``nbytes`` (rounded up to refills) of SEAL's PRNG stream, as uint64 words."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seeds are {SEED_BYTES} bytes, got {len(seed)}")
    refills = -(-nbytes // REFILL_BYTES)
    buf = np.empty(refills * REFILL_BYTES // 8, dtype=np.uint64)
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
        mv = memoryview(buf).cast("B")
        for i in range(refills):
            _refill_portable(seed, i, mv[i * REFILL_BYTES : (i + 1) * REFILL_BYTES])
    return buf


@functools.lru_cache(maxsize=16)
def _rejection_threshold(q: int) -> int:
    return _U64_MAX - (_U64_MAX % q) - 1


def expand_seed(seed: bytes, n: int, q: int, *, portable: bool = False) -> np.ndarray:
    """SEAL's ``sample_poly_uniform`` for one prime: the n NTT-form coefficients of a."""
    limit = _rejection_threshold(q)
    words = stream(seed, n * 8 + REFILL_BYTES, portable=portable)
    a = words[:n].copy()
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
    return a % np.uint64(q)


def fast_path_available() -> bool:
    return _BLAKE2XB is not None
