"""The row clip of a fit with estimated bounds (docs/dp.md, "Bounds estimated with DP").

Promise: without declared bounds the model clips every row, after the released feature map,
to the L2 norm √d/4 — a public rule on d alone, so it reveals nothing about the data — and
``predict`` (like the exported model) applies the same clip. The guarantee is unchanged: the
zCDP check of the whole fit still passes (``check_zcdp_total`` runs inside every such fit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import BudgetAccountant, DPLinearRegression, DPLogisticRegression


def _data(scale: float, seed: int, n: int = 300, d: int = 6):
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((n, d)) + 3.0 * scale
    return X, (X[:, 0] > 3.0 * scale).astype(int), X @ np.arange(1.0, d + 1.0)


@pytest.mark.parametrize("d", [4, 9])
def test_row_norm_is_a_public_function_of_d(d):
    """Two data sets on scales 1e-3 and 1e4 give the same row clip, √d/4 (computed here from
    the documented rule, not from the module's constant)."""
    norms = []
    for scale, seed in ((1e-3, 0), (1e4, 1)):
        X, yc, yr = _data(scale, seed, d=d)
        clf = DPLogisticRegression(
            epsilon=2.0, classes=[0, 1], accountant=BudgetAccountant(), random_state=seed
        ).fit(X, yc)
        reg = DPLinearRegression(epsilon=2.0, accountant=BudgetAccountant(), random_state=seed)
        reg.fit(X, yr)
        norms += [clf.data_norm_, reg.data_norm_]
        assert clf.feature_map_ is not None and reg.feature_map_ is not None
    assert norms == pytest.approx([math.sqrt(d) / 4.0] * 4, rel=1e-12)


def test_predict_clips_rows_to_the_row_norm_after_the_map():
    """decision_function equals the score of the row clipped to √d/4 in the map's units:
    x -> clip to bounds_X_ -> z = (x - center) / half -> z·min(1, r/‖z‖) -> back -> coef."""
    X, y, _ = _data(50.0, 3)
    clf = DPLogisticRegression(
        epsilon=1.0, classes=[0, 1], accountant=BudgetAccountant(), random_state=0
    ).fit(X, y)
    center, half = clf.feature_map_
    r = math.sqrt(X.shape[1]) / 4.0
    rng = np.random.default_rng(7)
    Q = X[:20] + 200.0 * rng.standard_normal((20, X.shape[1]))  # many rows beyond the clip
    z = (np.clip(Q, *clf.bounds_X_) - center) / half
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    assert (norms[:, 0] > r).sum() >= 10  # the clip is exercised
    clipped = center + half * z * np.minimum(1.0, r / norms)
    expected = clipped @ clf.coef_[0] + clf.intercept_[0]
    np.testing.assert_allclose(clf.decision_function(Q), expected, rtol=1e-9, atol=1e-9)
    # positive control: without the row clip the scores differ
    unclipped = center + half * z
    assert not np.allclose(unclipped @ clf.coef_[0] + clf.intercept_[0], expected, atol=1e-6)
