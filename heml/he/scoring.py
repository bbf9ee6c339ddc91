"""The two halves of encrypted scoring, one per party.

``ServerScorer`` (server): holds W, b and the layout plans; turns uploaded ciphertexts into
encrypted scores. It takes only public material (parameters, ciphertext bytes).

``ClientCodec`` (client): holds the secret keys; picks a layout for a batch, normalizes and
encrypts features, decrypts replies and recombines weight digits into scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidCiphertext
from . import column, row
from .decrypt import Decryptor
from .keys import KeySet
from .params import HEParams, default_params
from .plan import COLUMN, ROW, LayoutPlan, RowGeometry, make_plan, server_weights

ROW_DEGREE = 2048
COLUMN_DEGREE = 4096
MAX_ROW_GROUPS = 256  # sample groups (ciphertext sets) in one ROW block


def default_layout_params() -> dict[str, HEParams]:
    return {ROW: default_params(ROW_DEGREE), COLUMN: default_params(COLUMN_DEGREE)}


def plan_model(coef, intercept, center, half_width, tolerance: float) -> dict[str, LayoutPlan]:
    return {
        layout: make_plan(
            coef, intercept, center, half_width, layout=layout, params=p, tolerance=tolerance
        )
        for layout, p in default_layout_params().items()
    }


class ServerScorer:
    """Encrypted W·z + b for one model (server side)."""

    def __init__(self, coef, intercept, center, half_width, tolerance: float) -> None:
        from .plan import normalized_weights

        self.d = np.asarray(coef).shape[1]
        self.k = np.asarray(coef).shape[0]
        self.plans = plan_model(coef, intercept, center, half_width, tolerance)
        Wn, bn = normalized_weights(coef, intercept, center, half_width)
        self._weights = {lay: server_weights(plan, Wn, bn) for lay, plan in self.plans.items()}
        self._row = row.RowEvaluator(self._weights[ROW])

    def expected_ciphertexts(self, layout: str, n: int, s: int) -> int:
        if layout == COLUMN:
            return self.d
        geo = self._row.geometry(s)
        return -(-n // s) * geo.chunks

    def check_block(self, layout: str, n: int, s: int) -> None:
        plan = self.plans.get(layout)
        if plan is None:
            raise InvalidCiphertext(f"unknown layout {layout!r}")
        if n < 1:
            raise InvalidCiphertext("a block needs at least one sample (n ≥ 1)")
        if layout == COLUMN and n > plan.params.n:
            raise InvalidCiphertext(f"a COLUMN block holds at most {plan.params.n} samples, got {n}")
        if layout == ROW:
            smax = plan.max_samples_per_ciphertext(self.d)
            if not 1 <= s <= smax:
                raise InvalidCiphertext(
                    f"samples_per_ciphertext must be in [1, {smax}] for d={self.d}, got {s}"
                )
            if n > s * MAX_ROW_GROUPS:
                raise InvalidCiphertext("too many samples in one ROW block")

    def evaluate(self, layout: str, n: int, s: int, ciphertexts: list[bytes]) -> list[bytes]:
        self.check_block(layout, n, s)
        if layout == COLUMN:
            acc = self.column_accumulator(n)
            acc.add(ciphertexts)
            return acc.replies()
        return self._row.evaluate(ciphertexts, n, s)

    def column_accumulator(self, n: int) -> column.Accumulator:
        self.check_block(COLUMN, n, 0)
        return column.Accumulator(self._weights[COLUMN], n)


@dataclass(frozen=True)
class Block:
    """A slice of the client's batch and how it is encrypted."""

    start: int
    stop: int
    layout: str
    s: int  # ROW samples per ciphertext (0 for COLUMN)

    @property
    def n(self) -> int:
        return self.stop - self.start


# relative client+server cost (µs) per coefficient uploaded and per reply coefficient
_COST_UP = {ROW: 0.22, COLUMN: 0.20}
_COST_DOWN = 0.08


class ClientCodec:
    """Encrypt/decrypt side of one remote model (client side; holds keys, never sends them)."""

    def __init__(self, plans: dict[str, LayoutPlan], d: int, k: int, keys: KeySet) -> None:
        self.plans = plans
        self.d, self.k = d, k
        self.keys = keys
        self._decryptors: dict[HEParams, Decryptor] = {}

    def _decryptor(self, params: HEParams) -> Decryptor:
        dec = self._decryptors.get(params)
        if dec is None:
            dec = Decryptor(self.keys.get(params))
            self._decryptors[params] = dec
        return dec

    # ------------------------------------------------------------ layout choice
    def _row_geometry(self, s: int) -> RowGeometry:
        plan = self.plans[ROW]
        return RowGeometry(plan.params.n, self.d, self.k * plan.digits, s)

    def _row_cost(self, n: int, s: int) -> float:
        geo = self._row_geometry(s)
        blocks = -(-n // s)
        N = self.plans[ROW].params.n
        return blocks * N * (geo.chunks * _COST_UP[ROW] + geo.groups * _COST_DOWN)

    def _column_cost(self, n: int) -> float:
        plan = self.plans[COLUMN]
        N = plan.params.n
        blocks = -(-n // N)
        return blocks * N * (self.d * _COST_UP[COLUMN] + self.k * plan.digits * 2 * _COST_DOWN)

    def best_row_s(self, n: int) -> int:
        smax = self.plans[ROW].max_samples_per_ciphertext(self.d)
        cands = {min(n, smax)} | {1 << i for i in range(int(math.log2(smax)) + 1) if 1 << i <= smax}
        return min(cands, key=lambda s: (self._row_cost(n, s), s))

    def choose(self, n: int, layout: str | None = None) -> tuple[str, int]:
        """Layout and samples-per-ciphertext for a batch of n samples (cheapest estimate)."""
        if layout == COLUMN or (layout is None and COLUMN in self.plans and ROW not in self.plans):
            return COLUMN, 0
        s = self.best_row_s(n)
        if layout == ROW or COLUMN not in self.plans:
            return ROW, s
        return (COLUMN, 0) if self._column_cost(n) < self._row_cost(n, s) else (ROW, s)

    def blocks(self, n: int, layout: str | None = None) -> list[Block]:
        """Split a batch of n samples into blocks of one layout each."""
        lay, s = self.choose(n, layout)
        if lay == COLUMN:
            size = self.plans[COLUMN].params.n
            full, rest = divmod(n, size)
            blocks = [Block(i * size, (i + 1) * size, COLUMN, 0) for i in range(full)]
            if rest:
                # a small remainder may be cheaper in ROW layout
                rl, rs = self.choose(rest, layout)
                if rl == ROW:
                    per = rs * 64
                    blocks += [
                        Block(full * size + j, min(n, full * size + j + per), ROW, rs)
                        for j in range(0, rest, per)
                    ]
                else:
                    blocks.append(Block(full * size, n, COLUMN, 0))
            return blocks
        per = s * 64  # up to 64 ciphertext groups per block
        return [Block(i, min(n, i + per), ROW, s) for i in range(0, n, per)]

    # ------------------------------------------------------------ crypto
    def encrypt(self, Z: np.ndarray, block: Block) -> list[bytes]:
        """Normalized features of one block (n, d) in [-1, 1] -> ciphertexts."""
        plan = self.plans[block.layout]
        key = self.keys.get(plan.params)
        if block.layout == COLUMN:
            return column.encrypt(key, Z, plan)
        geo = self._row_geometry(block.s)
        out: list[bytes] = []
        for i in range(0, Z.shape[0], block.s):
            out.extend(row.encrypt(key, Z[i : i + block.s], plan, geo))
        return out

    def decrypt(self, replies: list[bytes], block: Block) -> np.ndarray:
        """Replies for one block -> scores (n, k)."""
        plan = self.plans[block.layout]
        dec = self._decryptor(plan.params)
        rows = self.k * plan.digits
        if block.layout == COLUMN:
            V = column.decrypt(dec, replies, block.n, plan, rows)
        else:
            geo = self._row_geometry(block.s)
            per = geo.groups
            parts = []
            for b, i in enumerate(range(0, block.n, block.s)):
                n_b = min(block.s, block.n - i)
                parts.append(row.decrypt(dec, replies[b * per : (b + 1) * per], n_b, plan, geo))
            V = np.vstack(parts)
        return recombine(V, plan, self.k)


def recombine(V: np.ndarray, plan: LayoutPlan, k: int) -> np.ndarray:
    """Row values (n, k·T) in units of q -> scores (n, k): Σ_t 2^(b t) v_t / (scale_x scale_w)."""
    T = plan.digits
    weights = np.ldexp(1.0, plan.digit_bits * np.arange(T))
    scores = V.reshape(V.shape[0], k, T) @ weights
    return scores / (plan.scale_x * plan.scale_w)
