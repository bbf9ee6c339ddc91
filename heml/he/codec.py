"""Client half of encrypted scoring: ``ClientCodec`` holds the secret keys, picks a layout for
a batch, encrypts normalized features and decrypts replies into scores.

Nothing in heml.server imports this module (tests/test_repository_contracts.py checks).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidCiphertext
from . import column, row, wire
from .decrypt import Decryptor, check_range, flood
from .encrypt import encrypt_coefficients
from .keys import KeySet, SecretKey
from .params import HEParams
from .plan import COLUMN, ROW, LayoutPlan, RowGeometry, flood_bound
from .private import PRIVATE
from .scoring import Block


def _row_encrypt(key: SecretKey, Z: np.ndarray, plan: LayoutPlan, geo: RowGeometry) -> list[bytes]:
    return encrypt_coefficients(key, row.encode(Z, plan, geo), row.extra_scale_bits(plan))


def _row_decrypt(
    dec: Decryptor, replies: list[bytes], n: int, plan: LayoutPlan, geo: RowGeometry
) -> np.ndarray:
    """Replies (one per output group) -> digit-row values V (n, k, T) in units of q."""
    N, bits = plan.params.n, plan.reply_bits
    if len(replies) != geo.groups:
        raise InvalidCiphertext(f"expected {geo.groups} replies, got {len(replies)}")
    out = np.empty((n, geo.k, geo.digits))
    for g, blob in enumerate(replies):
        t, first, count = geo.group_rows(g)
        pos = geo.output_positions(g)  # (count, s)
        c0, c1 = wire.unpack_reply(blob, pos.size, N, bits)
        vals = dec.to_value(dec.at_positions(c0, c1, pos.reshape(-1), bits), bits)
        out[:, first : first + count, t] = vals.reshape(pos.shape)[:, :n].T
    return out


def _column_encrypt(key: SecretKey, Z: np.ndarray, plan: LayoutPlan) -> list[bytes]:
    return encrypt_coefficients(key, column.encode(Z, plan))


def _column_decrypt(
    dec: Decryptor, replies: list[bytes], n: int, plan: LayoutPlan, rows: int
) -> np.ndarray:
    """Replies (one per output row, row = class · T + digit) -> V (n, k·T) in units of q."""
    N, bits = plan.params.n, plan.reply_bits
    if len(replies) != rows:
        raise InvalidCiphertext(f"expected {rows} replies, got {len(replies)}")
    out = np.empty((n, rows))
    for r, blob in enumerate(replies):
        c0, c1 = wire.unpack_reply(blob, n, N, bits)
        out[:, r] = dec.to_value(dec.leading(c0, c1, n, bits), bits)
    return out


# relative client+server cost (µs) per coefficient uploaded and per reply coefficient
_COST_UP = {ROW: 0.22, COLUMN: 0.20}
_COST_DOWN = 0.08


class ClientCodec:
    """Encrypt/decrypt side of one remote model (client side; holds keys, never sends them).

    ``protect=False`` switches off the malicious-server guards of ``decrypt`` (range check
    and flooding, heml.he.decrypt); it exists for the attack tests' positive controls only.
    """

    def __init__(
        self, plans: dict[str, LayoutPlan], d: int, k: int, keys: KeySet, protect: bool = True
    ) -> None:
        self.protect = protect
        self.plans = plans
        self.d, self.k = d, k
        self.keys = keys
        self._decryptors: dict[HEParams, Decryptor] = {}
        self._geometries: dict[tuple[str, int], RowGeometry] = {}
        self._choices: dict[tuple[int, str | None], tuple[str, int]] = {}

    def _decryptor(self, params: HEParams) -> Decryptor:
        dec = self._decryptors.get(params)
        if dec is None:
            dec = Decryptor(self.keys.get(params))
            self._decryptors[params] = dec
        return dec

    # ------------------------------------------------------------ layout choice
    def _row_geometry(self, s: int, layout: str = ROW) -> RowGeometry:
        geo = self._geometries.get((layout, s))
        if geo is None:
            plan = self.plans[layout]
            geo = RowGeometry(plan.params.n, self.d, self.k, plan.digits, s)
            self._geometries[(layout, s)] = geo
        return geo

    def ciphertext_count(self, block: Block) -> int:
        """Ciphertexts a block uploads."""
        if block.layout == COLUMN:
            return self.d
        return -(-block.n // block.s) * self._row_geometry(block.s, block.layout).chunks

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
        key = (n, layout)
        hit = self._choices.get(key)
        if hit is None:
            hit = self._choose(n, layout)
            if len(self._choices) < 4096:
                self._choices[key] = hit
        return hit

    def _choose(self, n: int, layout: str | None) -> tuple[str, int]:
        if PRIVATE in self.plans:  # a model-privacy model is served in that mode only
            return PRIVATE, min(n, self.plans[PRIVATE].max_samples_per_ciphertext(self.d))
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
        per = s * (16 if lay == PRIVATE else 64)  # ciphertext groups per block
        return [Block(i, min(n, i + per), lay, s) for i in range(0, n, per)]

    # ------------------------------------------------------------ crypto
    def encrypt(self, Z: np.ndarray, block: Block) -> list[bytes]:
        """Normalized features of one block (n, d) in [-1, 1] -> ciphertexts."""
        plan = self.plans[block.layout]
        key = self.keys.get(plan.params)
        if block.layout == COLUMN:
            return _column_encrypt(key, Z, plan)
        geo = self._row_geometry(block.s, block.layout)
        out: list[bytes] = []
        for i in range(0, Z.shape[0], block.s):
            out.extend(_row_encrypt(key, Z[i : i + block.s], plan, geo))
        return out

    def encrypt_iter(self, Z: np.ndarray, block: Block, max_ciphertexts: int):
        """Like ``encrypt`` but yields the block's ciphertexts in order, at most
        ``max_ciphertexts`` at a time, so a large block never sits whole in memory."""
        plan = self.plans[block.layout]
        key = self.keys.get(plan.params)
        step = max(1, max_ciphertexts)
        if block.layout == COLUMN:
            coeffs = column.encode(Z, plan)  # (d, N) int64: small next to the ciphertexts
            for j in range(0, coeffs.shape[0], step):
                yield encrypt_coefficients(key, coeffs[j : j + step])
            return
        geo = self._row_geometry(block.s, block.layout)
        groups_per_message = max(1, step // geo.chunks)
        for i in range(0, Z.shape[0], block.s * groups_per_message):
            part = Z[i : i + block.s * groups_per_message]
            out: list[bytes] = []
            for g in range(0, part.shape[0], block.s):
                out.extend(_row_encrypt(key, part[g : g + block.s], plan, geo))
            yield out

    def decrypt(self, replies: list[bytes], block: Block) -> np.ndarray:
        """Replies for one block -> scores (n, k), range-checked and flooded (``protect``).

        Raises InvalidCiphertext for a reply of the wrong count or size, or one that decrypts
        outside the plan's range."""
        plan = self.plans[block.layout]
        dec = self._decryptor(plan.params)
        rows = self.k * plan.digits
        expected = self.reply_count(block)
        if len(replies) != expected:
            raise InvalidCiphertext(f"expected {expected} replies, got {len(replies)}")
        if block.layout == COLUMN:
            V = _column_decrypt(dec, replies, block.n, plan, rows)
        else:
            geo = self._row_geometry(block.s, block.layout)
            per = geo.groups
            parts = []
            for b, i in enumerate(range(0, block.n, block.s)):
                n_b = min(block.s, block.n - i)
                parts.append(_row_decrypt(dec, replies[b * per : (b + 1) * per], n_b, plan, geo))
            V = np.concatenate(parts).reshape(block.n, -1)
        if not self.protect:
            return recombine(V, plan, self.k)
        check_range(V, dec.q)
        return flood(recombine(V, plan, self.k), flood_bound(plan))

    def reply_count(self, block: Block) -> int:
        """Replies an honest server sends for a block."""
        plan = self.plans[block.layout]
        if block.layout == COLUMN:
            return self.k * plan.digits
        return -(-block.n // block.s) * self._row_geometry(block.s, block.layout).groups


def recombine(V: np.ndarray, plan: LayoutPlan, k: int) -> np.ndarray:
    """Digit rows (n, k·T), class-major, in units of q -> scores (n, k):
    Σ_t 2^(b t) v_t / (scale_x · scale_w)."""
    T = plan.digits
    weights = np.ldexp(1.0, plan.digit_bits * np.arange(T))
    scores = V.reshape(V.shape[0], k, T) @ weights
    return scores / (plan.scale_x * plan.scale_w)
