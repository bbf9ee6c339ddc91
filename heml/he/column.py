"""COLUMN layout: one ciphertext per feature, one sample per coefficient (large batches).

Block of n ≤ N samples: ciphertext j holds round(z[:, j] · 2^log2_scale_x) in coefficients
0..n-1. The server computes, for each output row r, Σ_j D[r, j] · ct_j (small integer digits,
no rotations, no keys), converts to coefficient form, adds the row's bias to coefficients
0..n-1 and replies with c0[0..n-1] and c1, switched to 2^reply_bits.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidCiphertext
from . import kernels, modmath, prng, wire
from .plan import LayoutPlan, ServerWeights

MAX_CIPHERTEXTS_PER_STEP = 1 << 12  # rows fed to one exact modular matmul


# ---------------------------------------------------------------------- client (no keys)
def encode(Z: np.ndarray, plan: LayoutPlan) -> np.ndarray:
    """Normalized features (n ≤ N, d) -> message coefficients (d, N) as int64."""
    n, d = Z.shape
    N = plan.params.n
    if n > N:
        raise ValueError(f"a COLUMN block holds at most {N} samples")
    out = np.zeros((d, N), dtype=np.int64)
    out[:, :n] = np.rint(np.ldexp(Z.T, plan.log2_scale_x)).astype(np.int64)
    return out


# ---------------------------------------------------------------------- server
class Accumulator:
    """Σ_j D[:, j] · ct_j over ciphertexts as they arrive (streaming keeps O(rows · N) memory)."""

    def __init__(self, weights: ServerWeights, n_samples: int) -> None:
        plan = weights.plan
        self.weights = weights
        self.params = plan.params
        self.n_samples = n_samples
        self.expected = weights.digits.shape[2]
        self._rows = weights.digits_matrix
        self.received = 0
        rows = weights.rows
        self.acc0 = np.zeros((rows, plan.params.n), dtype=np.uint64)
        self.acc1 = np.zeros((rows, plan.params.n), dtype=np.uint64)

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    def add(self, ciphertexts: list[bytes]) -> None:
        """Validate and absorb the next ciphertexts (features received .. received+len-1)."""
        if self.received + len(ciphertexts) > self.expected:
            raise InvalidCiphertext(
                f"block has {self.received + len(ciphertexts)} ciphertexts; the model has "
                f"{self.expected} features (one ciphertext each)"
            )
        p = self.params
        if not ciphertexts:
            return
        # validate everything first: nothing is computed for a block with a bad ciphertext
        c0_all, seeds = wire.unpack_ciphertexts(list(ciphertexts), p.n, p.q, self.received)
        D = self._rows
        for start in range(0, len(seeds), MAX_CIPHERTEXTS_PER_STEP):
            c0 = c0_all[start : start + MAX_CIPHERTEXTS_PER_STEP]
            a = np.empty_like(c0)
            for i, seed in enumerate(seeds[start : start + len(c0)]):
                prng.expand_seed(seed, p.n, p.q, out=a[i])
            cols = D[:, self.received : self.received + len(c0)]
            self.acc0 = modmath.add_mod(self.acc0, modmath.dot_mod(cols, c0, p.q), p.q)
            self.acc1 = modmath.add_mod(self.acc1, modmath.dot_mod(cols, a, p.q), p.q)
            self.received += len(c0)

    def replies(self) -> list[bytes]:
        if not self.complete:
            raise InvalidCiphertext(
                f"block ended after {self.received} of {self.expected} ciphertexts"
            )
        p, plan = self.params, self.weights.plan
        n = self.n_samples
        ker = kernels.for_params(p)
        bias = self.weights.bias_residues().T.reshape(-1)  # row = class · T + digit
        out = []
        for r in range(self.weights.rows):
            c0, c1 = ker.intt(np.stack([self.acc0[r], self.acc1[r]]))
            c0 = modmath.add_mod(c0[:n], np.full(n, bias[r], dtype=np.uint64), p.q)
            out.append(
                wire.pack_reply(
                    modmath.switch_modulus(c0, p.q, plan.reply_bits),
                    modmath.switch_modulus(c1, p.q, plan.reply_bits),
                    plan.reply_bits,
                )
            )
        return out
