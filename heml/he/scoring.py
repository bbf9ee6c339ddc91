"""Server half of encrypted scoring: ``ServerScorer`` holds W, b and the layout plans and
turns uploaded ciphertexts into encrypted scores. It takes only public material (parameters,
ciphertext bytes); the client half (keys, encryption, decryption) is heml.he.codec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidCiphertext
from . import column, row
from .params import HEParams, default_params
from .plan import COLUMN, ROW, LayoutPlan, make_plan, server_weights

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
            raise InvalidCiphertext(
                f"a COLUMN block holds at most {plan.params.n} samples, got {n}"
            )
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
