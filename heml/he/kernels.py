"""Polynomial kernels on numpy arrays: NTT, inverse NTT, NTT-domain products.

``Kernels.for_params(params)`` returns SEAL-backed kernels (SEAL's C++ transforms, data moved
through heml.he.seal_bridge's zero-copy views) when that route verified, else the numpy
reference. Both give identical words; tests check that.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import tenseal.sealapi as seal

from . import modmath, seal_bridge
from .params import HEParams


class NumpyKernels:
    """Reference kernels (pure numpy; about 50x slower than SEAL's)."""

    def __init__(self, params: HEParams) -> None:
        self.params = params
        self._ntt = modmath.reference_ntt(params.n, params.q)

    def ntt(self, coeffs: np.ndarray) -> np.ndarray:
        return self._ntt.forward(coeffs)

    def intt(self, values: np.ndarray) -> np.ndarray:
        return self._ntt.inverse(values)

    def mul(self, ct: np.ndarray, plain_ntt: np.ndarray) -> np.ndarray:
        """(c0, c1) ⊙ p in the NTT domain: shape (2, N) times (N,)."""
        return modmath.mulmod(ct, np.broadcast_to(plain_ntt, ct.shape), self.params.q)

    def mul_rows(self, rows: np.ndarray, plain_ntt: np.ndarray) -> np.ndarray:
        """Each row of (r, N) ⊙ p in the NTT domain."""
        return self.mul(rows, plain_ntt)

    def dot_to_coeffs(self, cts: np.ndarray, plains: np.ndarray) -> np.ndarray:
        """Σ_c cts[c] ⊙ plains[c] (NTT domain, cts (C, 2, N), plains (C, N)) in coefficient
        form: shape (2, N)."""
        return _dot_to_coeffs_reference(self, cts, plains)


class SealKernels:
    """The same kernels run by SEAL's Evaluator on scratch ciphertexts, in place.

    Each thread keeps a small pool of scratch ciphertexts, each either in NTT or in
    coefficient form; a transform takes one of the right form, overwrites its words, transforms
    it in place (so it changes form) and returns it to the pool. SEAL refuses transforms whose
    second polynomial is all zero ("transparent"); such rows are handled without SEAL, since
    the transform of zero is zero.
    """

    def __init__(self, params: HEParams) -> None:
        self.params = params
        self._evaluator = seal.Evaluator(params.context)
        self._tls = threading.local()

    def _pool(self):
        pool = getattr(self._tls, "pool", None)
        if pool is None:
            pool = self._tls.pool = {True: [], False: []}
            self._tls.views = seal_bridge.ViewCache()
            plain = seal.Plaintext()
            seal.CKKSEncoder(self.params.context).encode(1.0, 1.0, plain)
            self._tls.plain = plain
        return pool

    def _take(self, ntt_form: bool):
        pool = self._pool()
        if pool[ntt_form]:
            return pool[ntt_form].pop()
        if pool[not ntt_form]:
            # reuse a spare one of the other form: its words are overwritten by the caller, so
            # only the form flag changes (or, failing that, a throwaway transform)
            ct = pool[not ntt_form].pop()
            if seal_bridge.set_ntt_form(ct, ntt_form):
                return ct
            self._tls.views.ciphertext(ct)[:] = 1
            if ntt_form:
                self._evaluator.transform_to_ntt_inplace(ct)
            else:
                self._evaluator.transform_from_ntt_inplace(ct)
            return ct
        zeros = np.zeros((2, self.params.n), dtype=np.uint64)
        return seal_bridge.ciphertext_from_words(self.params, zeros, ntt=ntt_form)

    def _transform(self, rows: np.ndarray, to_ntt: bool) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.uint64)
        flat = rows.reshape(-1, self.params.n)
        result = np.empty_like(flat)
        pool, views = self._pool(), self._tls.views
        for i in range(0, flat.shape[0], 2):
            pair = flat[i : i + 2]
            ct = self._take(not to_ntt)
            view = views.ciphertext(ct).reshape(2, -1)
            view[: pair.shape[0]] = pair
            zero_second = pair.shape[0] == 1 or not pair[1].any()
            if zero_second:
                view[1] = 1
            if to_ntt:
                self._evaluator.transform_to_ntt_inplace(ct)
            else:
                self._evaluator.transform_from_ntt_inplace(ct)
            out = views.ciphertext(ct).reshape(2, -1)
            result[i] = out[0]
            if pair.shape[0] == 2:
                result[i + 1] = 0 if zero_second else out[1]
            pool[to_ntt].append(ct)
        return result.reshape(rows.shape)

    def ntt(self, coeffs: np.ndarray) -> np.ndarray:
        """Forward NTT of each row of ``coeffs`` (..., N)."""
        return self._transform(coeffs, to_ntt=True)

    def intt(self, values: np.ndarray) -> np.ndarray:
        """Inverse NTT of each row of ``values`` (..., N)."""
        return self._transform(values, to_ntt=False)

    def mul(self, ct: np.ndarray, plain_ntt: np.ndarray) -> np.ndarray:
        """(c0, c1) ⊙ p in the NTT domain: shape (2, N) times (N,)."""
        if not np.any(plain_ntt):
            return np.zeros_like(ct)
        pool, views = self._pool(), self._tls.views
        scratch = self._take(True)
        views.ciphertext(scratch)[:] = np.asarray(ct, dtype=np.uint64).reshape(-1)
        views.plaintext(self._tls.plain)[:] = plain_ntt
        self._evaluator.multiply_plain_inplace(scratch, self._tls.plain)
        out = views.ciphertext(scratch).reshape(2, -1).copy()
        pool[True].append(scratch)
        return out

    def dot_to_coeffs(self, cts: np.ndarray, plains: np.ndarray) -> np.ndarray:
        """Σ_c cts[c] ⊙ plains[c] (NTT domain, cts (C, 2, N), plains (C, N)) in coefficient
        form, shape (2, N): SEAL's multiply_plain, add and inverse NTT on two scratch
        ciphertexts, with no copies between the steps."""
        live = [c for c in range(len(plains)) if plains[c].any()]
        if not live:
            return np.zeros((2, self.params.n), dtype=np.uint64)
        pool, views = self._pool(), self._tls.views
        plain, plain_view = self._tls.plain, views.plaintext(self._tls.plain)
        acc, tmp = self._take(True), self._take(True)
        try:
            for i, c in enumerate(live):
                target = acc if i == 0 else tmp
                views.ciphertext(target)[:] = cts[c].reshape(-1)
                plain_view[:] = plains[c]
                self._evaluator.multiply_plain_inplace(target, plain)
                if i:
                    self._evaluator.add_inplace(acc, tmp)
            if not views.ciphertext(acc).reshape(2, -1)[1].any():
                # SEAL refuses to transform a "transparent" ciphertext (c1 = 0)
                pool[True] += [acc, tmp]
                return _dot_to_coeffs_reference(self, cts, plains)
            self._evaluator.transform_from_ntt_inplace(acc)
        except (RuntimeError, ValueError):
            # SEAL refused (scratch objects are dropped): the same words from the reference
            return _dot_to_coeffs_reference(self, cts, plains)
        out = views.ciphertext(acc).reshape(2, -1).copy()
        pool[False].append(acc)
        pool[True].append(tmp)
        return out

    def mul_rows(self, rows: np.ndarray, plain_ntt: np.ndarray) -> np.ndarray:
        """Each row of (r, N) ⊙ p in the NTT domain (two rows per SEAL product)."""
        rows = np.asarray(rows, dtype=np.uint64)
        out = np.empty_like(rows)
        for i in range(0, rows.shape[0] - 1, 2):
            out[i : i + 2] = self.mul(rows[i : i + 2], plain_ntt)
        if rows.shape[0] % 2:
            pair = np.stack([rows[-1], rows[-1]])
            out[-1] = self.mul(pair, plain_ntt)[0]
        return out


def _dot_to_coeffs_reference(ker, cts: np.ndarray, plains: np.ndarray) -> np.ndarray:
    acc = None
    for ct, plain in zip(cts, plains, strict=True):
        prod = ker.mul(ct, plain)
        acc = prod if acc is None else modmath.add_mod(acc, prod, ker.params.q)
    return ker.intt(acc)


@functools.lru_cache(maxsize=8)
def for_params(params: HEParams) -> NumpyKernels | SealKernels:
    if seal_bridge.zero_copy_enabled():
        return SealKernels(params)
    return NumpyKernels(params)
