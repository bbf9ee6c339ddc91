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


class SealKernels:
    """The same kernels run by SEAL's Evaluator on scratch objects (one set per thread)."""

    def __init__(self, params: HEParams) -> None:
        self.params = params
        self._evaluator = seal.Evaluator(params.context)
        self._tls = threading.local()

    def _scratch(self):
        s = getattr(self._tls, "scratch", None)
        if s is None:
            p = self.params
            zeros = np.zeros((2, p.n), dtype=np.uint64)
            ntt_in = seal_bridge.ciphertext_from_words(p, zeros, ntt=True)
            coeff_in = seal_bridge.ciphertext_from_words(p, zeros, ntt=False)
            plain = seal.Plaintext()
            seal.CKKSEncoder(p.context).encode(1.0, 1.0, plain)
            s = (ntt_in, coeff_in, plain, seal.Ciphertext(p.context))
            self._tls.scratch = s
        return s

    def ntt(self, coeffs: np.ndarray) -> np.ndarray:
        """Forward NTT of each row of ``coeffs`` (..., N)."""
        _ntt_in, coeff_in, _plain, out = self._scratch()
        rows = np.asarray(coeffs, dtype=np.uint64).reshape(-1, self.params.n)
        result = np.empty_like(rows)
        view = seal_bridge.ciphertext_view(coeff_in).reshape(2, -1)
        for i in range(0, rows.shape[0], 2):
            pair = rows[i : i + 2]
            view[: pair.shape[0]] = pair
            if pair.shape[0] == 1:
                view[1] = 1  # a zero c1 makes SEAL refuse the "transparent" ciphertext
            self._evaluator.transform_to_ntt(coeff_in, out)
            result[i : i + 2] = seal_bridge.ciphertext_view(out).reshape(2, -1)[: pair.shape[0]]
        return result.reshape(np.shape(coeffs))

    def intt(self, values: np.ndarray) -> np.ndarray:
        """Inverse NTT of each row of ``values`` (..., N)."""
        ntt_in, _coeff_in, _plain, out = self._scratch()
        rows = np.asarray(values, dtype=np.uint64).reshape(-1, self.params.n)
        result = np.empty_like(rows)
        view = seal_bridge.ciphertext_view(ntt_in).reshape(2, -1)
        for i in range(0, rows.shape[0], 2):
            pair = rows[i : i + 2]
            view[: pair.shape[0]] = pair
            if pair.shape[0] == 1:
                view[1] = 1
            self._evaluator.transform_from_ntt(ntt_in, out)
            result[i : i + 2] = seal_bridge.ciphertext_view(out).reshape(2, -1)[: pair.shape[0]]
        return result.reshape(np.shape(values))

    def mul(self, ct: np.ndarray, plain_ntt: np.ndarray) -> np.ndarray:
        ntt_in, _coeff_in, plain, out = self._scratch()
        seal_bridge.ciphertext_view(ntt_in)[:] = np.asarray(ct, dtype=np.uint64).reshape(-1)
        seal_bridge.plaintext_view(plain)[:] = plain_ntt
        if not np.any(plain_ntt):
            return np.zeros_like(ct)
        self._evaluator.multiply_plain(ntt_in, plain, out)
        return seal_bridge.ciphertext_view(out).reshape(2, -1).copy()


@functools.lru_cache(maxsize=8)
def for_params(params: HEParams) -> NumpyKernels | SealKernels:
    if seal_bridge.zero_copy_enabled():
        return SealKernels(params)
    return NumpyKernels(params)
