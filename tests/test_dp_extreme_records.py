"""One huge but finite record must not change what a fit with DP-estimated bounds visibly does.

Found by an adversarial review (replace-one attacks). Each test was a confirmed break of the
promise that the whole fit is (epsilon, delta)-DP
and that no observable outcome (model, exception, warning) depends on the data except through
DP releases.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from heml.dp import DPLinearRegression, DPLogisticRegression

N = 1500


def _fit_outcome(make, X, y):
    """What an observer of ``fit`` sees besides the model: the exception (type) and warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make().fit(X, y)
            raised = None
        except Exception as exc:  # the type is the observable
            raised = type(exc).__name__
    return raised, sorted({(w.category.__name__, str(w.message)) for w in caught})


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: DPLogisticRegression(
            epsilon=1.0, delta=1e-6, classes=[0, 1], random_state=seed
        ),
        lambda seed: DPLinearRegression(epsilon=1.0, delta=1e-6, random_state=seed),
    ],
    ids=["logistic", "linear"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_one_huge_finite_record_does_not_make_fit_fail(make, seed):
    """Features on a small scale (|x| <= 0.01) get a DP box of half-width < 1; one record with
    a huge but finite value (1.7e308, inside the documented data universe "finite numbers",
    e.g. a DBL_MAX sentinel) then overflows to inf in ``normalize(X, center, half)``, which
    is applied to the *unclipped* X before the inner fit, and the inner fit's input validation
    raises "Input X contains infinity" after the budget was reserved. Whether fit raises is a
    deterministic function of one record: its neighbour (the same data with that value replaced
    by 0.005) fits. Expected: the two outcomes are the same (values are clipped to the released
    box before the map). Observed: ValueError on one neighbour, a model on the other."""
    rng = np.random.default_rng(123)
    X = rng.uniform(-0.01, 0.01, (N, 3))
    y = (X[:, 0] > 0).astype(float)
    neighbour = X.copy()
    neighbour[0, 0] = 0.005  # positive control: an ordinary record
    outlier = X.copy()
    outlier[0, 0] = 1.7e308  # finite: inside the data universe
    assert np.isfinite(outlier).all()

    control = _fit_outcome(lambda: make(seed), neighbour, y)
    assert control[0] is None, control  # the ordinary neighbour fits
    attacked = _fit_outcome(lambda: make(seed), outlier, y)
    assert attacked == control, (
        f"replace-one neighbours are distinguishable without noise: {attacked} vs {control}"
    )


def test_one_huge_finite_record_does_not_change_the_warnings_of_a_fit_that_succeeds():
    """Lower severity, same root cause (the map to [-1, 1] is applied before the clip): with the
    DP spread released (n = 20 000, the public rule holds), the centre and spread releases
    divide the *unclipped* X by the box's half-width (about 0.7 here), which overflows for a
    record at 1.5e308, while the final map divides by the spread's wider half-width and does
    not, so the fit succeeds and returns a model, but numpy's "overflow encountered in divide"
    RuntimeWarning is emitted on this neighbour only. The warning is a deterministic function
    of one record. Expected: no warnings on either neighbour (control: the ordinary
    neighbour has none). Observed: two RuntimeWarnings on the neighbour with the large record."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-0.5, 0.5, (20_000, 3))
    y = (X[:, 0] > 0).astype(int)
    neighbour = X.copy()
    neighbour[0, 0] = 0.4  # positive control: an ordinary record
    outlier = X.copy()
    outlier[0, 0] = 1.5e308

    def make():
        return DPLogisticRegression(epsilon=1.0, delta=1e-6, classes=[0, 1], random_state=0)

    control = _fit_outcome(make, neighbour, y)
    assert control == (None, []), control
    attacked = _fit_outcome(make, outlier, y)
    assert attacked[0] is None  # the fit itself succeeds: only the warnings differ
    assert attacked == control, f"warnings differ between neighbours: {attacked} vs {control}"
