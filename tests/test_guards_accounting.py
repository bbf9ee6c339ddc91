"""DP accounting and input checks, in process (issue 18, second round; docs/dp.md).

Promises checked at their bounds:

* privacy parameters: ε > 0 (inf: no privacy), δ in (0, 1) at finite ε, [0, 1] at ε = inf;
  δ < 1/n at finite ε; bounds are finite (lower, upper) pairs with lower ≤ upper; data_norm > 0;
* nothing is read from the data at finite ε: undeclared bounds fail closed; rows are clipped
  to the box, then onto the row norm (AUTO_NORM_FRACTION of the box's radius by default);
* the accountant composes sequentially (ε's and δ's add), allows a relative slack of 1e-9
  only, keeps a file-backed ledger with the same totals, and a fit reserves before it reads;
* the ledger file: one per user (XDG_DATA_HOME when absolute), schema and version checked,
  owner-only; a dataset is its records (row order, column order and names ignored).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import warnings

import numpy as np
import pytest

from heml.dp import _ledger, _validation
from heml.dp._accountant import (
    BudgetAccountant,
    BudgetError,
    Spend,
    _check_delta,
    _check_epsilon,
    _exceeds,
    _from_json,
    _to_json,
)
from heml.dp._base import DPEstimatorMixin
from heml.dp._warnings import BoundsWarning

# ---------------------------------------------------------------------- privacy parameters
check = _validation.check_privacy_params


def test_epsilon_must_be_positive_and_inf_means_no_privacy():
    assert check(1e-3, 0.5) == (1e-3, 0.5)  # the floor (round 5: dp-accounting's limits)
    assert check(1e6, 0.5) == (1e6, 0.5)  # the cap
    for outside in (9.99e-4, 1e-300, 1.000001e6, 1e300):
        with pytest.raises(ValueError, match=r"^epsilon must be in \[0.001, 1e\+06\] or inf"):
            check(outside, 1e-5)
    assert check(2, 1e-5) == (2.0, 1e-5) and isinstance(check(2, 1e-5)[0], float)
    for bad in (0, 0.0, -1.0, -math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^epsilon must be > 0 \(inf for no privacy\)"):
            check(bad, 1e-5)
    for bad in (True, "1", None):
        with pytest.raises(ValueError, match=r"^epsilon must be a positive number, got"):
            check(bad, 1e-5)


def test_delta_is_in_the_open_unit_interval_at_finite_epsilon():
    assert check(1.0, 1e-30) == (1.0, 1e-30)  # the floor (round 5)
    with pytest.raises(ValueError, match=r"^delta must be in \[1e-30, 1\)"):
        check(1.0, 9.99e-31)
    assert check(1.0, 1 - 1e-12)[1] == 1 - 1e-12
    for bad in (0, 0.0, 1, 1.0, -1e-9, 1.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^delta must be in \[1e-30, 1\) \(the Gaussian"):
            check(1.0, bad)
    for bad in (True, "0.1", None):
        with pytest.raises(ValueError, match=r"^delta must be a number in \(0, 1\), got"):
            check(1.0, bad)


def test_at_infinite_epsilon_delta_may_be_zero_or_one():
    assert check(math.inf, 0) == (math.inf, 0.0)
    assert check(math.inf, 1) == (math.inf, 1.0)
    for bad in (-1e-9, 1.0000001, math.nan):
        with pytest.raises(ValueError, match=r"^delta must be in \[0, 1\], got"):
            check(math.inf, bad)


def test_delta_must_be_below_one_over_n():
    _validation.check_delta_vs_n(1.0, 0.01 - 1e-12, 100)
    for bad in (0.01, 0.5):
        with pytest.raises(ValueError, match=r"^delta=0\.(01|5) is not below 1/n = 0\.01 "
                           r"\(n_samples = 100\).*e\.g\. 0\.001\)"):  # fmt: skip
            _validation.check_delta_vs_n(1.0, bad, 100)
    _validation.check_delta_vs_n(math.inf, 0.5, 100)  # no privacy claimed: no condition


# ---------------------------------------------------------------------- bounds and norms
def test_bounds_are_broadcast_finite_pairs_with_lower_at_most_upper():
    lo, hi = _validation.parse_bounds((-1, [1, 2, 3]), 3, "bounds_X")
    assert lo.tolist() == [-1, -1, -1] and hi.tolist() == [1, 2, 3]
    lo[0] = 5  # a copy, not a view of a broadcast
    assert lo.tolist() == [5, -1, -1] and lo.dtype == np.float64
    assert _validation.parse_bounds((2, 2), 2, "b")[0].tolist() == [2, 2]  # lower = upper ok
    with pytest.raises(ValueError, match=r"^bounds_X must be a \(lower, upper\) pair"):
        _validation.parse_bounds((1, 2, 3), 3, "bounds_X")
    with pytest.raises(ValueError, match=r"^bounds_X must be a \(lower, upper\) pair"):
        _validation.parse_bounds(None, 3, "bounds_X")
    with pytest.raises(ValueError, match=r"^b must hold scalars or one value per feature \(3\)"):
        _validation.parse_bounds(([0, 1], 1), 3, "b")
    for bounds in (("x", 1), (1, "x")):
        with pytest.raises(ValueError, match=r"^b must hold scalars or one value per feature"):
            _validation.parse_bounds(bounds, 3, "b")
    for bounds in ((-math.inf, 1), (0, math.nan), (0, [1, math.inf])):
        with pytest.raises(ValueError, match=r"^b must be finite numbers"):
            _validation.parse_bounds(bounds, 2, "b")
    with pytest.raises(ValueError, match=r"^b: lower bound 3 is above upper bound 2 \(index 1\)"):
        _validation.parse_bounds(([1, 3], [1, 2]), 2, "b")  # index 0 is equal: fine


def test_data_norm_is_positive_or_none():
    assert _validation.check_data_norm(None) is None
    assert _validation.check_data_norm(2) == 2.0
    assert _validation.check_data_norm(math.inf) == math.inf
    assert _validation.check_data_norm(1e-300) == 1e-300
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^data_norm must be > 0 \(inf: no row clipping\)"):
            _validation.check_data_norm(bad)
    for bad in (True, "1"):
        with pytest.raises(ValueError, match=r"^data_norm must be a positive number or None"):
            _validation.check_data_norm(bad)


def _warned(values, lo, hi, name="bounds_X") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _validation.warn_if_mostly_outside(values, lo, hi, name)
    return [str(w.message) for w in caught if issubclass(w.category, BoundsWarning)]


def _warned_by(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, BoundsWarning)]


def test_the_bounds_warning_fires_when_more_than_half_a_column_is_outside():
    half = np.array([[0.0, 0.0], [5.0, 0.0]])  # column 0: exactly half outside
    assert _warned(half, -1, 1) == []
    on_bounds = np.array([[-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    assert _warned(on_bounds, -1, 1) == []  # on the bounds is inside
    most = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 0.0]])
    (msg,) = _warned(most, -1, 1)
    assert msg.startswith("bounds_X: most training values of 1 of 2 feature(s) lie outside")
    assert "(worst column: 67%)" in msg
    assert msg.endswith(
        "are clipped to them (worst column: 67%); the bounds must be in the data's own units "
        "(-3,3 suits standardized features only); omit them to have them estimated with DP. "
        "(Computed from the training data, shown to you only.)"
    )
    (msg,) = _warned(np.array([[9.0], [9.0]]), 0, 1, "bounds_y")
    assert msg.startswith("bounds_y: most training values of the target lie outside")
    assert "(worst column: 100%)" in msg


def test_declared_bounds_are_used_and_the_row_norm_defaults_to_a_third_of_the_box_radius():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"^bounds_X: lower bound 1 is above upper bound 0"):
        _validation.resolve_feature_bounds(X, (1, 0), None, private=True)
    lo, hi, norm, source = _validation.resolve_feature_bounds(X, (-3, 4), None, private=True)
    assert lo.tolist() == [-3, -3] and hi.tolist() == [4, 4] and source == "declared"
    assert norm == pytest.approx(math.sqrt(32) / 3)
    # a data_norm at or above the box's radius clips nothing
    r = math.sqrt(32)
    assert _validation.resolve_feature_bounds(X, (-3, 4), r, private=True)[2] is None
    assert _validation.resolve_feature_bounds(X, (-3, 4), r * 0.99, private=True)[2] == r * 0.99
    # a data_norm below 1 is used as given; so is a default norm below 1
    assert _validation.resolve_feature_bounds(X, (-3, 4), 0.5, private=True)[2] == 0.5
    small = _validation.resolve_feature_bounds(X, (-0.5, 0.5), None, private=True)[2]
    assert small == pytest.approx(math.sqrt(0.5) / 3)
    # declared bounds that most values miss: the warning names bounds_X
    far = np.full((3, 2), 50.0)
    (msg,) = _warned_by(
        lambda: _validation.resolve_feature_bounds(far, (-3, 4), None, private=True)
    )
    assert msg.startswith("bounds_X: most training values of 2 of 2 feature(s) lie outside")
    # an all-zero box has radius 0: nothing to scale
    assert _validation.resolve_feature_bounds(X, (0, 0), None, private=True)[2] is None


def test_only_none_data_or_private_bounds_mean_estimate():
    X = np.zeros((2, 2))
    for bounds in ("auto", "Data", ""):
        with pytest.raises(ValueError, match=r"^bounds_X must be a \(lower, upper\) pair"):
            _validation.resolve_feature_bounds(X, bounds, None, private=False)


def test_a_finite_data_norm_alone_implies_the_box_and_nothing_is_read():
    X = np.full((3, 2), 100.0)
    lo, hi, norm, source = _validation.resolve_feature_bounds(X, None, 2.0, private=True)
    assert lo.tolist() == [-2, -2] and hi.tolist() == [2, 2]
    assert source == "implied by data_norm" and norm == 2.0


@pytest.mark.parametrize("bounds", [None, "data"])
def test_undeclared_bounds_fail_closed_at_finite_epsilon(bounds):
    X = np.array([[1.0, -2.0], [3.0, 4.0]])
    norm = None if bounds is None else 5.0
    with pytest.raises(RuntimeError, match="^bounds_X must be declared or estimated with DP"):
        _validation.resolve_feature_bounds(X, bounds, norm if bounds else math.inf, private=True)
    lo, hi, _, source = _validation.resolve_feature_bounds(X, bounds, None, private=False)
    assert lo.tolist() == [1, -2] and hi.tolist() == [3, 4]
    assert source.startswith("read from the training data (epsilon=inf")
    y = np.array([2.0, -1.0, 5.0])
    with pytest.raises(RuntimeError, match="^bounds_y must be declared or estimated with DP"):
        _validation.resolve_target_bounds(y, bounds, private=True)
    assert _validation.resolve_target_bounds(y, bounds, private=False) == (
        -1.0,
        5.0,
        "read from the training data (epsilon=inf)",
    )


def test_declared_target_bounds():
    lo, hi, source = _validation.resolve_target_bounds(np.array([0.5]), (0, 1), private=True)
    assert (lo, hi, source) == (0.0, 1.0, "declared")
    with pytest.raises(ValueError, match="^bounds_y: lower bound 1 is above upper bound 0"):
        _validation.resolve_target_bounds(np.array([0.5]), (1, 0), private=True)
    # the target is one value: per-feature pairs of two are refused
    with pytest.raises(
        ValueError, match=r"^bounds_y must hold scalars or one value per feature \(1\)"
    ):
        _validation.resolve_target_bounds(np.array([0.5]), ([0, 1], [2, 3]), private=True)
    assert _validation.resolve_target_bounds(np.array([0.5]), ([0], [2]), private=True)[:2] == (
        0.0,
        2.0,
    )


def test_rows_are_clipped_to_the_box_then_onto_the_row_norm():
    X = np.array([[10.0, 0.0], [3.0, 4.0], [0.3, 0.4], [-10.0, -10.0]])
    out = _validation.clip_rows(X.copy(), np.array([-6.0, -6.0]), np.array([6.0, 6.0]), None)
    assert out.tolist() == [[6, 0], [3, 4], [0.3, 0.4], [-6, -6]]
    out = _validation.clip_rows(X.copy(), np.array([-6.0, -6.0]), np.array([6.0, 6.0]), 5.0)
    np.testing.assert_allclose(out, [[5, 0], [3, 4], [0.3, 0.4], [-5 / 2**0.5] * 2])
    # in the fitted [-1, 1] space of an estimated box: (x - center) / half, scaled to center
    fm = (np.array([10.0, 0.0]), np.array([2.0, 4.0]))
    X = np.array([[16.0, 0.0], [11.0, 2.0]])
    out = _validation.clip_rows(X, np.array([0.0, -8.0]), np.array([20.0, 8.0]), 1.0, fm)
    np.testing.assert_allclose(out, [[12.0, 0.0], [11.0, 2.0]])
    assert np.linalg.norm((out[0] - fm[0]) / fm[1]) == pytest.approx(1.0)


# ---------------------------------------------------------------------- the accountant
def test_the_relative_slack_is_one_in_a_billion():
    assert not _exceeds(1.0 + 0.9e-9, 1.0)
    assert _exceeds(1.0 + 1.1e-9, 1.0)
    assert not _exceeds(0.0, 0.0) and _exceeds(1e-200, 0.0)
    assert not _exceeds(1e300, math.inf)


def test_epsilon_and_delta_are_checked_by_name():
    assert _check_epsilon(math.inf, "e", allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=r"^e must be a positive number \(inf allowed\), got inf"):
        _check_epsilon(math.inf, "e", allow_inf=False)
    for bad in (0, -1, math.nan, True):
        with pytest.raises(ValueError, match=r"^e must be a positive number \(inf allowed\)"):
            _check_epsilon(bad, "e", allow_inf=True)
    with pytest.raises(ValueError, match=r"^e must be a positive number, got 'x'"):
        _check_epsilon("x", "e", allow_inf=True)
    assert _check_delta(0, "d") == 0.0 and _check_delta(1, "d") == 1.0
    for bad in (-1e-12, 1.0000001, math.nan, False):
        with pytest.raises(ValueError, match=r"^d must be a number in \[0, 1\], got"):
            _check_delta(bad, "d")
    with pytest.raises(ValueError, match=r"^d must be a number in \[0, 1\], got None"):
        _check_delta(None, "d")


def test_spends_compose_by_adding_epsilons_and_deltas():
    acc = BudgetAccountant(epsilon=1.0, delta=1e-5)
    acc.spend(0.25, 2e-6, mechanism="a", extra=1)
    acc.spend(0.5, 3e-6)
    assert acc.spent == pytest.approx((0.75, 5e-6), rel=1e-15)
    assert acc.remaining() == pytest.approx((0.25, 5e-6))
    ledger = acc.ledger
    assert ledger[0] == Spend(0.25, 2e-6, "a", {"extra": 1})
    ledger.clear()  # a copy
    assert len(acc.ledger) == 2
    with pytest.raises(BudgetError, match=r"requested \(epsilon=0\.3, delta=0\)"):
        acc.spend(0.3, 0.0)
    with pytest.raises(BudgetError, match=r"only \(epsilon=0\.25, delta=5e-06\) remains"):
        acc.check(0.1, 6e-6)
    acc.check(0.25, 5e-6)
    acc.spend(0.25, 5e-6)
    assert acc.remaining()[0] == 0.0 and 0.0 <= acc.remaining()[1] < 1e-20  # never negative
    assert "spent epsilon=1, delta=1e-05 in 3 fit(s)" in repr(acc)


def test_the_totals_are_validated():
    for eps in (0, -1, math.nan):
        with pytest.raises(ValueError, match="epsilon must be a positive number"):
            BudgetAccountant(epsilon=eps)
    for delta in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"delta must be a number in \[0, 1\]"):
            BudgetAccountant(delta=delta)
    unlimited = BudgetAccountant()
    assert (unlimited.epsilon, unlimited.delta) == (math.inf, 1.0)
    unlimited.spend(1e6, 0.5)


def test_inf_is_stored_as_a_string_in_ledger_files():
    assert _to_json(math.inf) == "inf" and _to_json(2.0) == 2.0
    assert _from_json("inf") == math.inf and _from_json(2) == 2.0


def test_a_file_backed_ledger_holds_its_totals_and_every_spend(tmp_path):
    path = tmp_path / "budget.json"
    acc = BudgetAccountant(epsilon=math.inf, delta=1e-5, path=path)
    assert acc.path == path.resolve()
    assert json.loads(path.read_text()) == {"epsilon": "inf", "delta": 1e-5, "spends": []}
    acc.spend(0.5, 1e-6, mechanism="m")
    again = BudgetAccountant(epsilon=math.inf, delta=1e-5, path=path)
    assert again.ledger == [Spend(0.5, 1e-6, "m", {})]
    assert sorted(os.listdir(tmp_path)) == ["budget.json", "budget.json.lock"]  # no tmp left
    where = re.escape(repr(str(path.resolve())))
    held = rf"^the ledger file {where} holds the budget \(epsilon=inf, delta=1e-05\), not "
    with pytest.raises(ValueError, match=held + r"\(epsilon=1, delta=1e-05\); open it with"):
        BudgetAccountant(epsilon=1.0, delta=1e-5, path=path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"^cannot read the ledger file {where}: "):
        acc.spend(0.1, 0)
    path.unlink()
    with pytest.raises(BudgetError, match=f"^the ledger file {where} has disappeared$"):
        acc.check(0.1, 0)
    # a ledger file with its totals and no spends yet is an empty ledger
    path.write_text(json.dumps({"epsilon": "inf", "delta": 1e-5}))
    assert acc.ledger == [] and acc.spent == (0.0, 0.0)
    with pytest.raises(
        TypeError, match=r"^accountant must be a heml.dp.BudgetAccountant or None, got str$"
    ):
        BudgetAccountant.load_default("acc")


def test_a_with_block_is_the_default_for_its_thread_and_nests():
    outer, inner = BudgetAccountant(epsilon=1.0), BudgetAccountant(epsilon=2.0)
    assert BudgetAccountant.load_default(outer) is outer
    with outer:
        assert BudgetAccountant.load_default() is outer
        with inner:
            assert BudgetAccountant.load_default() is inner
        assert BudgetAccountant.load_default() is outer
    assert BudgetAccountant.load_default() not in (outer, inner)
    assert BudgetAccountant._chosen_default() is None or BudgetAccountant._chosen_default() not in (
        outer,
        inner,
    )


def test_a_copy_in_another_process_refuses_and_a_file_backed_one_works(monkeypatch, tmp_path):
    """An in-memory accountant unpickled in another process (a joblib worker, a fork) cannot
    record where the others see it: it refuses. Unpickled in its own process it is itself. A
    file-backed one works anywhere: the file is the shared state."""
    from heml.dp import _accountant

    acc = BudgetAccountant(epsilon=1.0, delta=1e-5)
    other = BudgetAccountant(epsilon=1.0, delta=1e-5)  # each accountant is its own budget
    blob = pickle.dumps(acc)
    assert pickle.loads(blob) is acc and acc._is_live_here()
    assert pickle.loads(pickle.dumps(other)) is other
    here = os.getpid()
    monkeypatch.setattr(_accountant.os, "getpid", lambda: here + 1)  # "another process"
    assert not acc._is_live_here()
    copy = pickle.loads(blob)
    assert copy is not acc and not copy._is_live_here()
    assert (copy.epsilon, copy.delta) == (1.0, 1e-5)
    for call in (lambda: copy.check(0.1, 0), lambda: copy.spend(0.1, 0)):
        with pytest.raises(
            BudgetError, match="^this BudgetAccountant is a copy in another process"
        ):
            call()
    monkeypatch.undo()
    assert acc._is_live_here() and acc.ledger == []

    shared = BudgetAccountant(epsilon=1.0, delta=1e-5, path=tmp_path / "ledger.json")
    blob = pickle.dumps(shared)
    monkeypatch.setattr(_accountant.os, "getpid", lambda: here + 1)
    worker = pickle.loads(blob)
    assert worker is not shared and worker._pid == here + 1
    worker.spend(0.25, 1e-6, mechanism="worker")
    monkeypatch.undo()
    assert shared.ledger == [Spend(0.25, 1e-6, "worker", {})]


def test_blocks_open_in_several_other_threads_are_ambiguous():
    a, b = BudgetAccountant(epsilon=1.0), BudgetAccountant(epsilon=2.0)
    BudgetAccountant._open_blocks.extend([a, b])  # as if two other threads were inside `with`
    try:
        with pytest.raises(BudgetError) as info:
            BudgetAccountant.load_default()
        assert str(info.value) == (
            "several `with BudgetAccountant(...)` blocks are open in other threads and this "
            "thread entered none, so the budget to charge is ambiguous: pass accountant=... "
            "to the estimator, or enter the block in this thread"
        )
        BudgetAccountant._open_blocks.remove(b)
        assert BudgetAccountant.load_default() is a  # one open block: that one
    finally:
        for acc in (a, b):
            while acc in BudgetAccountant._open_blocks:
                BudgetAccountant._open_blocks.remove(acc)


def test_a_default_set_with_set_default_is_the_chosen_one():
    saved = BudgetAccountant._default
    acc = BudgetAccountant(epsilon=1.0)
    try:
        BudgetAccountant._default = None
        implicit = BudgetAccountant.load_default()  # nobody chose it: nothing to carry
        assert implicit.epsilon == math.inf and BudgetAccountant._chosen_default() is None
        assert acc.set_default() is acc
        assert BudgetAccountant.load_default() is acc
        assert BudgetAccountant._chosen_default() is acc  # carried into worker processes
    finally:
        BudgetAccountant._default = saved


# ---------------------------------------------------------------------- fit: reserve first
class _Fit(DPEstimatorMixin):
    def __init__(self, epsilon, delta, accountant):
        self.epsilon, self.delta, self.accountant, self.random_state = (
            epsilon,
            delta,
            accountant,
            None,
        )


def test_a_fit_reserves_before_reading_and_a_refused_reservation_forgets_the_model():
    acc = BudgetAccountant(epsilon=1.0, delta=1e-5)
    est = _Fit(0.6, 1e-6, acc)
    est.coef_ = "old model"
    est._private, est._kept_ = 1, 2
    eps, delta, got = est._begin_fit()
    assert (eps, delta, got) == (0.6, 1e-6, acc)
    assert not hasattr(est, "coef_")  # an earlier fit is forgotten
    assert est._private == 1 and est._kept_ == 2  # private state is not a fitted attribute
    est._reserve(acc, eps, delta, "gaussian")
    assert acc.ledger == [Spend(0.6, 1e-6, "gaussian", {})]
    est.coef_ = "fitted"
    with pytest.raises(BudgetError):
        est._begin_fit()  # the fail-fast check: 0.6 more does not fit
    est.coef_ = "fitted"
    est._state_ = "private, not a fitted attribute"
    with pytest.raises(BudgetError):
        est._reserve(acc, 0.6, 1e-6, "gaussian")
    assert not hasattr(est, "coef_")  # fitted attributes (public, trailing _) go
    assert est._state_ and est._private == 1  # nothing else does
    assert (est.epsilon, est.delta, est.accountant) == (0.6, 1e-6, acc)
    assert len(acc.ledger) == 1  # nothing spent by the refusal
    est._reserve(acc, 0.4, 9e-6, "x")  # an exact fit of the rest is recorded
    assert acc.remaining() == pytest.approx((0.0, 0.0))


def test_a_fit_checks_its_privacy_parameters_first():
    acc = BudgetAccountant(epsilon=1.0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        _Fit(0.0, 1e-6, acc)._begin_fit()
    with pytest.raises(ValueError, match=r"delta must be in \[1e-30, 1\)"):
        _Fit(0.5, 0.0, acc)._begin_fit()
    assert acc.ledger == []


# ---------------------------------------------------------------------- the ledger file
GOLDEN = "table:467a369d54adb7e2e47a3542ec4745584aec96d5555c8d4888e7c6d3c469cbfd"


def test_the_ledger_lives_under_an_absolute_xdg_data_home_only(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert _ledger.default_path() == tmp_path / "heml" / "privacy-ledger.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in ("relative/dir", ""):
        monkeypatch.setenv("XDG_DATA_HOME", value)
        want = tmp_path / "home" / ".local" / "share" / "heml" / "privacy-ledger.json"
        assert _ledger.default_path() == want


def test_a_ledger_file_is_checked_and_written_owner_only(tmp_path):
    path = tmp_path / "sub" / "ledger.json"
    empty = _ledger.load(path)
    assert empty == {"schema": _ledger.SCHEMA, "schema_version": 2, "datasets": {}}
    _ledger.save(path, empty)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _ledger.load(path) == empty
    with pytest.raises(ValueError):
        _ledger.save(path, {**empty, "x": math.nan})  # no NaN in the file
    where = re.escape(repr(str(path)))
    cases = [
        ("{", f"^cannot read privacy ledger {where}: "),
        ("[]", f"^{where} is not a heml privacy ledger$"),
        ('{"schema": "other"}', f"^{where} is not a heml privacy ledger$"),
        (
            json.dumps({"schema": _ledger.SCHEMA, "schema_version": 1}),
            f"^privacy ledger {where} has schema_version 1; this heml reads 2: keep the old "
            "file for your records and pass --ledger with a new path",
        ),
        (
            json.dumps({"schema": _ledger.SCHEMA, "schema_version": 2, "datasets": []}),
            f"^privacy ledger {where} is damaged: 'datasets' is not an object$",
        ),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(_ledger.LedgerError, match=message):
            _ledger.load(path)
    path.write_text(json.dumps({"schema": _ledger.SCHEMA, "schema_version": 2}))
    assert _ledger.load(path)["datasets"] == {}
    with _ledger.locked(path):
        assert (tmp_path / "sub" / "ledger.json.lock").exists()


def test_a_dataset_is_its_records_whatever_their_order_and_names():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "c": [0.5, -0.0, math.nan]})
    fp = _ledger.table_fingerprint(df)
    assert fp.startswith("table:") and len(fp) == 6 + 64
    same = [
        df.iloc[[2, 0, 1]],
        df[["c", "a", "b"]],
        df.rename(columns={"a": "z"}),
        df.assign(a=[1.0, 2.0, 3.0]),  # 1 and 1.0 are equal
        df.assign(c=[0.5, 0.0, math.nan]),  # −0 and +0 are equal
    ]
    for other in same:
        assert _ledger.table_fingerprint(other) == fp
    different = [
        df.iloc[:2],
        df.assign(a=[1, 2, 4]),
        df.assign(b=["x", "y", "None"]),
        df.assign(b=["x", "y", "nan"]),
        df.assign(c=[0.5, 0.0, 1.0]),
        df.assign(d=1),
        pd.concat([df, df.iloc[:1]]),
    ]
    for other in different:
        assert _ledger.table_fingerprint(other) != fp
    # columns holding the same values tie: their order (and names) cannot matter either
    ties = pd.DataFrame({"p": [1, 2, 3], "q": [2, 3, 1], "r": [7, 8, 9], "s": [3, 1, 2]})
    tied = _ledger.table_fingerprint(ties)
    for cols in (["q", "p", "r", "s"], ["r", "s", "q", "p"], ["s", "r", "p", "q"]):
        assert _ledger.table_fingerprint(ties[cols].set_axis(list("abcd"), axis=1)) == tied
    assert _ledger.table_fingerprint(ties.assign(r=[7, 8, 10])) != tied
    pair = pd.DataFrame({"p": [1, 2, 3], "q": [2, 3, 1], "r": [7, 8, 9]})  # a tie of two
    assert _ledger.table_fingerprint(pair) == _ledger.table_fingerprint(pair[["r", "q", "p"]])
    # no columns: the row count still counts
    assert _ledger.table_fingerprint(pd.DataFrame(index=range(3))) != _ledger.table_fingerprint(
        pd.DataFrame(index=range(2))
    )
    # nullable integers and missing values are numbers like any other
    nullable = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64")})
    assert _ledger.table_fingerprint(nullable) == _ledger.table_fingerprint(
        pd.DataFrame({"a": [1.0, math.nan, 3.0]})
    )
    assert _ledger.dataset_key("cohort-7", df) == "id:cohort-7"
    assert _ledger.dataset_key(None, df) == fp


def test_fingerprints_are_stable_across_versions():
    """A ledger file keys its datasets by fingerprint: a changed fingerprint would start a
    fresh budget for data already spent on. These values were computed by heml 0.x (this
    round) and must never change."""
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {
            "n": [1.5, -0.0, math.nan, 4.0],
            "t": ["x", None, "y", "x"],
            "b": [True, False, True, True],
            "i": [3, 1, 2, 3],
        }
    )
    assert _ledger.table_fingerprint(df) == GOLDEN


def test_a_fingerprint_follows_the_document():
    """SHA-256 over "heml-table-v1:{n}x{width}:" and the sorted rows of the cells, a number's
    cell being its float64 bits."""
    import hashlib

    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [2.0, 1.0]})
    h = hashlib.sha256(b"heml-table-v1:2x1:")
    h.update(np.array([1.0, 2.0]).view(np.uint64).astype("<u8").tobytes())
    assert _ledger.table_fingerprint(df) == "table:" + h.hexdigest()
    two = pd.DataFrame({"u": [2.0, 1.0, 1.0], "v": [5.0, 9.0, 3.0]})
    cols = [np.array(two[c], dtype=np.float64).view(np.uint64) for c in two.columns]
    keyed = sorted(cols, key=lambda c: hashlib.sha256(np.sort(c).tobytes()).digest())
    rows = sorted(zip(*[c.tolist() for c in keyed], strict=True))
    h = hashlib.sha256(b"heml-table-v1:3x2:")
    h.update(np.array(rows, dtype="<u8").tobytes())
    assert _ledger.table_fingerprint(two) == "table:" + h.hexdigest()
    text = pd.DataFrame({"s": ["b"]})
    code = int.from_bytes(hashlib.sha256(b"b").digest()[:8], "little")
    h = hashlib.sha256(b"heml-table-v1:1x1:")
    h.update(np.array([code], dtype="<u8").tobytes())
    assert _ledger.table_fingerprint(text) == "table:" + h.hexdigest()


def test_settling_a_reservation_keeps_it_charged():
    data = {"datasets": {}}
    kw = {"source": "d.csv", "budget_epsilon": 2.0, "budget_delta": 1e-5, "model": "m"}
    first = _ledger.reserve(data, "k", epsilon=0.5, delta=1e-6, **kw)
    second = _ledger.reserve(data, "k", epsilon=0.25, delta=2e-6, **kw)
    entry = data["datasets"]["k"]
    assert entry["spent_epsilon"] == 0.75 and entry["spent_delta"] == 3e-6
    _ledger.settle(data, "k", first, "failed: ConvergenceError")
    _ledger.settle(data, "k", "no-such-id", "ok")
    _ledger.settle(data, "other", first, "ok")
    statuses = {s["id"]: s["status"] for s in entry["spends"]}
    assert statuses == {first: "failed: ConvergenceError", second: "reserved"}
    assert _ledger.spent(data, "k") == (0.75, 3e-6)
    assert _ledger.spent(data, "other") == (0.0, 0.0)
