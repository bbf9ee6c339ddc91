"""BudgetAccountant: check before the data, spend after the model, refuse overdrafts."""

import copy
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from heml.dp import BudgetAccountant, BudgetError, DPLinearRegression, DPLogisticRegression


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, (X[:, 0] > 0).astype(int)


def test_spend_and_remaining():
    acc = BudgetAccountant(epsilon=3.0, delta=2e-5)
    acc.spend(1.0, 1e-5)
    eps, delta = acc.remaining()
    assert eps == pytest.approx(2.0) and delta == pytest.approx(1e-5)
    assert acc.spent == (1.0, 1e-5)


def test_budget_error_says_requested_and_remaining_and_changes_nothing():
    acc = BudgetAccountant(epsilon=1.5, delta=1e-4)
    acc.spend(1.0, 1e-5)
    with pytest.raises(BudgetError, match=r"requested \(epsilon=1,.*only \(epsilon=0.5") as info:
        acc.spend(1.0, 1e-5)
    assert isinstance(info.value, ValueError)
    assert acc.spent == (1.0, 1e-5) and len(acc.ledger) == 1


def test_many_small_spends_fit_exactly():
    acc = BudgetAccountant(epsilon=1.0, delta=1.0)
    for _ in range(10):
        acc.spend(0.1, 0.0)
    with pytest.raises(BudgetError):
        acc.spend(1e-6, 0.0)


def test_refused_fit_never_reads_data_and_spends_nothing():
    acc = BudgetAccountant(epsilon=0.5, delta=1e-3)

    class Exploding:
        def __array__(self, *a, **k):
            raise AssertionError("data was read before the budget check")

    with pytest.raises(BudgetError):
        DPLogisticRegression(epsilon=1.0, bounds_X=(-3, 3), accountant=acc).fit(
            Exploding(), Exploding()
        )
    assert acc.spent == (0.0, 0.0)


def test_fit_spends_once_after_success():
    acc = BudgetAccountant(epsilon=3.0, delta=2e-5)
    X, y = _data()
    DPLogisticRegression(epsilon=1.0, bounds_X=(-3, 3), accountant=acc, random_state=0).fit(X, y)
    DPLinearRegression(
        epsilon=1.0, bounds_X=(-3, 3), bounds_y=(-3, 3), accountant=acc, random_state=0
    ).fit(X, X[:, 0])
    assert acc.spent == pytest.approx((2.0, 2e-5))
    with pytest.raises(BudgetError):  # a third fit at δ=1e-5 exceeds δ
        DPLogisticRegression(epsilon=0.5, bounds_X=(-3, 3), accountant=acc).fit(X, y)
    assert acc.spent == pytest.approx((2.0, 2e-5))


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.array([[np.nan, 1.0]] * 50), np.arange(50) % 2, "NaN"),
        (np.array([[np.inf, 1.0]] * 50), np.arange(50) % 2, "infinity"),
        (np.array([["a", "b"]] * 50), np.arange(50) % 2, "convert"),
        (np.ones((50, 2)), np.zeros(50), "at least 2 classes"),
        (np.ones((0, 2)), np.zeros(0), "0 sample"),
        (np.ones((50, 2)), np.arange(50) % 2, "not below 1/n"),  # δ=0.1 ≥ 1/50
    ],
)
def test_bad_input_raises_before_spending(X, y, match):
    acc = BudgetAccountant(epsilon=10.0, delta=0.5)
    delta = 0.1 if match == "not below 1/n" else 1e-5
    with pytest.raises(ValueError, match=match):
        DPLogisticRegression(epsilon=1.0, delta=delta, bounds_X=(-3, 3), accountant=acc).fit(X, y)
    assert acc.spent == (0.0, 0.0)


@pytest.mark.parametrize("eps", [0, -1.0, float("nan"), "1", None])
def test_bad_epsilon(eps):
    acc = BudgetAccountant()
    X, y = _data()
    with pytest.raises(ValueError, match="epsilon"):
        DPLogisticRegression(epsilon=eps, bounds_X=(-3, 3), accountant=acc).fit(X, y)
    assert acc.spent == (0.0, 0.0)


def test_clone_and_deepcopy_share_the_accountant():
    acc = BudgetAccountant(epsilon=2.0, delta=1e-4)
    assert copy.deepcopy(acc) is acc
    est = DPLogisticRegression(epsilon=0.5, bounds_X=(-3, 3), accountant=acc, random_state=0)
    assert clone(est).accountant is acc
    X, y = _data()
    cross_val_score(est, X, y, cv=3)  # three clones fit: 3 × 0.5 spent in the caller's ledger
    assert acc.spent[0] == pytest.approx(1.5)
    with pytest.raises(BudgetError):
        cross_val_score(est, X, y, cv=3, error_score="raise")
    assert acc.spent[0] == pytest.approx(2.0)  # the first clone fitted, the second was refused


def test_with_block_sets_the_default_and_restores_it():
    X, y = _data()
    before = BudgetAccountant.load_default()
    with BudgetAccountant(epsilon=1.0, delta=1e-5) as acc:
        assert BudgetAccountant.load_default() is acc
        DPLogisticRegression(epsilon=1.0, bounds_X=(-3, 3), random_state=0).fit(X, y)
        with pytest.raises(BudgetError):
            DPLogisticRegression(epsilon=1.0, bounds_X=(-3, 3)).fit(X, y)
    assert BudgetAccountant.load_default() is before
    assert acc.spent == (1.0, 1e-5)


def test_accountant_argument_type_is_checked():
    X, y = _data()
    with pytest.raises(TypeError, match="BudgetAccountant"), warnings.catch_warnings():
        DPLogisticRegression(bounds_X=(-3, 3), accountant="budget").fit(X, y)
