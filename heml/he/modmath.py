"""Exact arithmetic modulo a prime q < 2^54 on numpy uint64 arrays, and a reference NTT.

numpy has no 128-bit products, so products are split: a multiplier below 2^27 keeps the
float64 quotient estimate within one unit, and the wrapped uint64 remainder is corrected by a
single conditional add/subtract. The NTT here matches SEAL's ``ntt_negacyclic_harvey`` bit for
bit (same root, same bit-reversed order); heml.he.seal_kernels is the fast path, this the
reference it is tested against.
"""

from __future__ import annotations

import functools

import numpy as np

U64 = np.uint64
LIMB_BITS = 27
LIMB_MASK = (1 << LIMB_BITS) - 1
MAX_Q_BITS = 54


def _check_q(q: int) -> None:
    if q.bit_length() > MAX_Q_BITS:
        raise ValueError(f"modmath supports moduli up to {MAX_Q_BITS} bits")


def reduce_signed(x: np.ndarray, q: int) -> np.ndarray:
    """int64 values (any sign) -> uint64 residues in [0, q)."""
    return np.mod(x, np.int64(q)).astype(U64)


def lift_small(x: np.ndarray, q: int) -> np.ndarray:
    """int64 values with |x| < q -> uint64 residues in [0, q) (two passes, no division)."""
    r = np.asarray(x, dtype=np.int64).astype(U64)  # negatives wrap to 2^64 + x
    np.add(r, U64(q), out=r, where=x < 0)  # ... and 2^64 + x + q wraps to x + q
    return r


def add_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a + b) mod q for residues a, b < q."""
    s = np.add(a, b, dtype=U64)
    np.subtract(s, U64(q), out=s, where=s >= U64(q))
    return s


def sub_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a - b) mod q for residues a, b < q."""
    d = np.subtract(a, b, dtype=U64)  # wraps when a < b ...
    np.add(d, U64(q), out=d, where=np.less(a, b))  # ... and adding q wraps back
    return d


def mulmod_small(x: np.ndarray, c, q: int) -> np.ndarray:
    """x * c mod q for residues x < q and multipliers 0 <= c < 2^27 (scalar or array)."""
    c = np.asarray(c, dtype=U64)
    quot = np.floor(x.astype(np.float64) * (c.astype(np.float64) / float(q))).astype(U64)
    r = (x * c - quot * U64(q)).view(np.int64)  # exact value in (-q, 2q) after wraparound
    r = np.where(r < 0, r + np.int64(q), r)
    r = np.where(r >= np.int64(q), r - np.int64(q), r)
    return r.astype(U64)


def mulmod(x: np.ndarray, y: np.ndarray, q: int) -> np.ndarray:
    """x * y mod q for residues x, y < q < 2^54 (y split into 27-bit limbs)."""
    _check_q(q)
    hi = mulmod_small(x, y >> U64(LIMB_BITS), q)
    hi = mulmod_small(hi, 1 << LIMB_BITS, q)
    lo = mulmod_small(x, y & U64(LIMB_MASK), q)
    return add_mod(hi, lo, q)


def dot_mod(D: np.ndarray, X: np.ndarray, q: int) -> np.ndarray:
    """(D @ X) mod q for small signed integers D (R × m) and residues X (m × N), exactly.

    X is split once into two 27-bit limbs and D into as many limbs as needed so that every
    partial sum D_limb @ X_limb is an integer below 2^53: float64 BLAS computes it exactly. The
    partial products are recombined modulo q. (Splitting D is free: it is tiny.)
    """
    _check_q(q)
    D = np.asarray(D, dtype=np.int64)
    m = X.shape[0]
    dmax = int(np.abs(D).max()) if D.size else 0
    if dmax == 0:
        return np.zeros((D.shape[0], X.shape[1]), dtype=U64)
    width = 52 - LIMB_BITS - max(1, (m - 1).bit_length())  # bits of D per limb
    if width < 4:
        raise ValueError("too many ciphertexts for one exact modular product")
    d_limbs = []
    sign = np.sign(D)
    mag = np.abs(D)
    shift = 0
    while (mag >> shift).any():
        d_limbs.append((shift, (sign * ((mag >> shift) & ((1 << width) - 1))).astype(np.float64)))
        shift += width
    x_limbs = (
        (0, (X & U64(LIMB_MASK)).astype(np.float64)),
        (LIMB_BITS, (X >> U64(LIMB_BITS)).astype(np.float64)),
    )
    reduce = lift_small if q > 1 << 52 else reduce_signed  # |sum| < 2^52 < q: no division
    out = np.zeros((D.shape[0], X.shape[1]), dtype=U64)
    for xs, xl in x_limbs:
        for ds, dl in d_limbs:
            partial = reduce((dl @ xl).astype(np.int64), q)  # exact: |sum| < 2^52
            out = add_mod(out, _mul_pow2(partial, xs + ds, q), q)
    return out


def _mul_pow2(x: np.ndarray, shift: int, q: int) -> np.ndarray:
    """x * 2^shift mod q, in steps of at most 26 bits (mulmod_small's range)."""
    while shift > 0:
        step = min(shift, LIMB_BITS - 1)
        x = mulmod_small(x, 1 << step, q)
        shift -= step
    return x


def switch_modulus(x: np.ndarray, q: int, bits: int) -> np.ndarray:
    """round(x * 2^bits / q) mod 2^bits for residues x < q (CKKS modulus switching).

    Rounding is to within about 2^(bits-52) units; heml.he.plan accounts for it.
    """
    if not 16 <= bits <= 56:
        raise ValueError("reply bits must be in [16, 56]")
    y = np.rint(x.astype(np.float64) * (float(1 << bits) / float(q))).astype(U64)
    return y & U64((1 << bits) - 1)


def _bitrev(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def minimal_primitive_root(n: int, q: int) -> int:
    """SEAL's choice of ψ: the smallest primitive 2n-th root of unity modulo q."""
    order = 2 * n
    if (q - 1) % order:
        raise ValueError("q is not 1 mod 2n")
    # a generator of the 2n-th roots: g^((q-1)/2n) with ψ^n = -1
    for g in range(2, 1 << 16):
        psi = pow(g, (q - 1) // order, q)
        if pow(psi, n, q) == q - 1:
            break
    else:  # pragma: no cover - primes always have such a g
        raise ValueError("no primitive root found")
    best, cur, sq = psi, psi, psi * psi % q
    for _ in range(n - 1):  # all odd powers are primitive 2n-th roots
        cur = cur * sq % q
        best = min(best, cur)
    return best


class ReferenceNTT:
    """Negacyclic NTT mod q in numpy, bit-compatible with SEAL (slow: tests and fallback)."""

    def __init__(self, n: int, q: int) -> None:
        _check_q(q)
        self.n, self.q = n, q
        psi = minimal_primitive_root(n, q)
        br = _bitrev(n)
        pows = [1] * n
        for i in range(1, n):
            pows[i] = pows[i - 1] * psi % q
        ipsi = pow(psi, -1, q)
        ipows = [1] * n
        for i in range(1, n):
            ipows[i] = ipows[i - 1] * ipsi % q
        self._psi_rev = np.array([pows[b] for b in br], dtype=U64)
        self._ipsi_rev = np.array([ipows[b] for b in br], dtype=U64)
        self._n_inv = pow(n, -1, q)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """Coefficients (..., n) -> NTT values in SEAL's order."""
        a = np.array(a, dtype=U64, copy=True)
        lead = a.shape[:-1]
        n, q = self.n, self.q
        t, m = n, 1
        while m < n:
            t //= 2
            v = a.reshape(*lead, m, 2, t)
            w = np.broadcast_to(self._psi_rev[m : 2 * m][:, None], (m, t))
            u = v[..., 0, :].copy()
            x = mulmod(v[..., 1, :], np.broadcast_to(w, v[..., 1, :].shape), q)
            v[..., 0, :] = add_mod(u, x, q)
            v[..., 1, :] = sub_mod(u, x, q)
            m *= 2
        return a

    def inverse(self, a: np.ndarray) -> np.ndarray:
        """NTT values (..., n) in SEAL's order -> coefficients."""
        a = np.array(a, dtype=U64, copy=True)
        lead = a.shape[:-1]
        n, q = self.n, self.q
        t, m = 1, n
        while m > 1:
            h = m // 2
            v = a.reshape(*lead, h, 2, t)
            w = np.broadcast_to(self._ipsi_rev[h : 2 * h][:, None], (h, t))
            u = v[..., 0, :].copy()
            x = v[..., 1, :].copy()
            v[..., 0, :] = add_mod(u, x, q)
            v[..., 1, :] = mulmod(sub_mod(u, x, q), np.broadcast_to(w, x.shape), q)
            t *= 2
            m = h
        return mulmod(a, np.full(a.shape, self._n_inv, dtype=U64), q)


@functools.lru_cache(maxsize=4)
def reference_ntt(n: int, q: int) -> ReferenceNTT:
    return ReferenceNTT(n, q)
