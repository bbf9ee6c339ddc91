"""ROW layout: samples along the coefficients, features in blocks (few samples, any d).

With s samples per ciphertext and m = min(d, N // s) features per chunk, sample a's chunk
values sit at coefficients a·m .. a·m + m - 1. The server multiplies each chunk ciphertext by a
plaintext polynomial holding the reversed digit rows of that chunk (row r' of an output group
at offset r'·s·m), sums the chunks in the NTT domain and converts to coefficient form. The
negacyclic product puts Σ_i z[a, i] D[r, i] on coefficient r'·s·m + a·m + m - 1 with nothing
else added there (heml.he.plan.RowGeometry). One polynomial product per chunk and output
group; no rotations, no keys.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..errors import InvalidCiphertext
from . import kernels, modmath, prng, wire
from .plan import LayoutPlan, RowGeometry, ServerWeights

ENCODE_BITS = 52  # at most this many bits of a feature's scale go into int64 coefficients


def extra_scale_bits(plan) -> int:
    """Power of two the encryptor multiplies in (mod q) beyond the int64 coefficients."""
    return max(0, plan.log2_scale_x - ENCODE_BITS)


# ---------------------------------------------------------------------- client (no keys)
def encode(Z: np.ndarray, plan: LayoutPlan, geo: RowGeometry) -> np.ndarray:
    """Normalized features (n ≤ s, d) -> message coefficients (chunks, N) as int64."""
    n, d = Z.shape
    if n > geo.s:
        raise ValueError(f"a ROW block holds at most {geo.s} samples")
    N, m = plan.params.n, geo.m
    # scales above 2^52 (model-privacy mode) are applied modulo q by the encryptor
    scaled = np.rint(np.ldexp(Z, min(plan.log2_scale_x, ENCODE_BITS))).astype(np.int64)
    padded = np.zeros((geo.s, geo.chunks * m), dtype=np.int64)
    padded[:n, :d] = scaled
    out = np.zeros((geo.chunks, N), dtype=np.int64)
    pos = geo.input_positions()  # (s, m)
    for c in range(geo.chunks):
        out[c, pos] = padded[:, c * m : (c + 1) * m]
    return out


# ---------------------------------------------------------------------- server
class RowEvaluator:
    """Server side of the ROW layout for one model plan; caches weight polynomials per s."""

    def __init__(self, weights: ServerWeights, cache_size: int = 16) -> None:
        self.weights = weights
        self.plan = weights.plan
        self.params = weights.plan.params
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def geometry(self, s: int) -> RowGeometry:
        try:
            T, k, d = self.weights.digits.shape
            return RowGeometry(self.params.n, d, k, T, s)
        except ValueError as exc:
            raise InvalidCiphertext(str(exc)) from exc

    def _plain_polys(self, geo: RowGeometry) -> np.ndarray:
        """NTT-form weight polynomials, shape (chunks, groups, N)."""
        with self._lock:
            hit = self._cache.get(geo.s)
            if hit is not None:
                self._cache.move_to_end(geo.s)
                return hit
        D = self.weights.digits  # (T, k, d)
        N, m, s = self.params.n, geo.m, geo.s
        polys = np.zeros((geo.chunks, geo.groups, N), dtype=np.int64)
        for c in range(geo.chunks):
            for g in range(geo.groups):
                t, first, count = geo.group_rows(g)
                rows = D[t, first : first + count, c * m : (c + 1) * m]  # (count, m_c)
                m_c = rows.shape[1]
                for rp in range(count):
                    start = rp * s * m + m - m_c
                    polys[c, g, start : start + m_c] = rows[rp, ::-1]
        ntt = kernels.for_params(self.params).ntt(modmath.reduce_signed(polys, self.params.q))
        with self._lock:
            self._cache[geo.s] = ntt
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return ntt

    def evaluate(self, ciphertexts: list[bytes], n: int, s: int) -> list[bytes]:
        geo = self.geometry(s)
        blocks = -(-n // s)
        expected = blocks * geo.chunks
        if len(ciphertexts) != expected:
            raise InvalidCiphertext(
                f"{n} samples at {s} per ciphertext with {geo.chunks} feature chunk(s) need "
                f"{expected} ciphertexts, got {len(ciphertexts)}"
            )
        p = self.params
        c0_all, seeds = wire.unpack_ciphertexts(ciphertexts, p.n, p.q)  # validates everything
        polys = self._plain_polys(geo)
        ker = kernels.for_params(p)
        bias = self.weights.bias_residues()
        bits = self.plan.reply_bits
        cts = np.empty((geo.chunks, 2, p.n), dtype=np.uint64)
        out = []
        for b in range(blocks):
            for c in range(geo.chunks):
                i = b * geo.chunks + c
                cts[c, 0] = c0_all[i]
                prng.expand_seed(seeds[i], p.n, p.q, out=cts[c, 1])
            for g in range(geo.groups):
                c0, c1 = ker.dot_to_coeffs(cts, polys[:, g])
                t, first, count = geo.group_rows(g)
                pos = geo.output_positions(g)
                row_bias = np.repeat(bias[t, first : first + count], pos.shape[1])
                c0_out = modmath.add_mod(c0[pos.reshape(-1)], row_bias, p.q)
                out.append(
                    wire.pack_reply(
                        modmath.switch_modulus(c0_out, p.q, bits),
                        modmath.switch_modulus(c1, p.q, bits),
                        bits,
                    )
                )
        return out
