"""The DP estimators' input checks and the primality guard at their exact edges (issue 18,
fourth round).

* ``DPLinearRegression`` takes a numeric target: an object array of numbers written as text
  (what a CSV read without dtypes gives) fits the same model as the float array.
* A text target (labels given to the regression) is refused before any budget is spent, with a
  message that does not quote a label.
* Declared bounds up to ±1e100 (``MAX_BOUND``) in magnitude are accepted; the next float up is
  refused, with a message that names the argument, the limit and the bounds given.
* A ``BoundsWarning`` is attributed to the user's line that called ``fit``, not to heml's code.
* Row norms of an all-zero row are exactly 0, with no numpy warning (``_robust_norms``: the row
  clip and the bounds box's radius measure every row through it).
* ``_is_prime`` answers below 2^61 (SEAL's ``Modulus`` limit) and refuses, with its message,
  from 2^61 on.
"""

import inspect
import math
import os
import re
import sys
import warnings

import numpy as np
import pytest

from heml.dp import BoundsWarning, BudgetAccountant, DPLinearRegression, DPLogisticRegression
from heml.dp._base import NOT_REAL_MESSAGE
from heml.dp._validation import MAX_BOUND, _robust_norms
from heml.he.params import _is_prime


def _regression_data(n=200, d=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, d))
    return X, X @ np.linspace(0.5, -0.3, d)


# ------------------------------------------------------------------------- a numeric target


def test_an_object_array_of_numbers_as_text_is_a_numeric_target():
    X, y = _regression_data()
    as_text = np.array([str(float(v)) for v in y], dtype=object)
    assert as_text.dtype == object and all(float(s) == v for s, v in zip(as_text, y, strict=True))

    def fit(target):
        return DPLinearRegression(
            epsilon=1.0, bounds_X=(-1, 1), bounds_y=(-1, 1), random_state=0
        ).fit(X, target)

    reference, from_text = fit(y), fit(as_text)
    np.testing.assert_array_equal(from_text.coef_, reference.coef_)
    assert from_text.intercept_ == reference.intercept_
    assert from_text.coef_.dtype == np.float64


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("kind", ["str array", "bytes array", "list of str"])
def test_a_text_target_is_refused_before_paying_and_without_quoting_it(kind, declared):
    # a regression target of labels: numpy's conversion error quoted the first one
    # ("could not convert string to float: 'secret-0'") after the budget was spent
    X, _ = _regression_data()
    labels = [f"secret-{i}" for i in range(len(X))]
    y = {
        "str array": np.array(labels),
        "bytes array": np.array([s.encode() for s in labels]),
        "list of str": labels,
    }[kind]
    acc = BudgetAccountant(epsilon=2.0, delta=1e-3)
    bounds = {"bounds_X": (-1, 1), "bounds_y": (-1, 1)} if declared else {}
    est = DPLinearRegression(epsilon=1.0, accountant=acc, random_state=0, **bounds)
    with pytest.raises(ValueError) as info:
        est.fit(X, y)
    assert str(info.value) == NOT_REAL_MESSAGE
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert acc.spent == (0.0, 0.0)


def test_numeric_targets_and_text_class_labels_are_still_accepted():
    X, y = _regression_data()
    flags = y > 0
    as_bool = DPLinearRegression(epsilon=1.0, bounds_X=(-1, 1), bounds_y=(0, 1), random_state=0)
    as_float = DPLinearRegression(epsilon=1.0, bounds_X=(-1, 1), bounds_y=(0, 1), random_state=0)
    as_int = DPLinearRegression(epsilon=1.0, bounds_X=(-1, 1), bounds_y=(0, 1), random_state=0)
    reference = as_float.fit(X, flags.astype(float)).coef_
    np.testing.assert_array_equal(as_bool.fit(X, flags).coef_, reference)
    np.testing.assert_array_equal(as_int.fit(X, flags.astype(np.int32)).coef_, reference)
    words = np.where(flags, "yes", "no")
    clf = DPLogisticRegression(classes=["no", "yes"], bounds_X=(-1, 1), random_state=0)
    assert set(clf.fit(X, words).predict(X)) <= {"no", "yes"}


# -------------------------------------------------------------------------- the bounds' limit


def _fit_with_bounds(bounds_X=(-1, 1), bounds_y=(-1, 1)):
    X, y = _regression_data()
    return DPLinearRegression(
        epsilon=1.0, bounds_X=bounds_X, bounds_y=bounds_y, random_state=0
    ).fit(X, y)


@pytest.mark.parametrize("which", ["bounds_X", "bounds_y"])
def test_bounds_of_exactly_the_limit_are_accepted(which):
    assert MAX_BOUND == 1e100
    for bounds in [(-MAX_BOUND, MAX_BOUND), (-MAX_BOUND, 1.0), (-1.0, MAX_BOUND)]:
        reg = _fit_with_bounds(**{which: bounds})
        assert np.all(np.isfinite(reg.coef_)) and math.isfinite(reg.intercept_)


@pytest.mark.parametrize("which", ["bounds_X", "bounds_y"])
def test_bounds_one_float_beyond_the_limit_are_refused_with_the_message(which):
    above = float(np.nextafter(MAX_BOUND, np.inf))
    assert above > MAX_BOUND
    for bounds in [(-above, 1.0), (-1.0, above), (-above, above)]:
        with pytest.raises(ValueError) as info:
            _fit_with_bounds(**{which: bounds})
        assert str(info.value) == f"{which} must lie within ±1e+100, got {bounds!r}"


# ------------------------------------------------------------- the BoundsWarning's source line


def _bounds_warnings(fit, X, y):
    """Call fit(X, y) from this file: the BoundsWarnings, the line of the call, and the stack
    (innermost first, as (file, line)) at each call of warnings.warn."""
    stacks = []

    def on_call(frame, event, arg):
        if event == "c_call" and arg is warnings.warn:
            chain = []
            while frame is not None:
                chain.append((frame.f_code.co_filename, frame.f_lineno))
                frame = frame.f_back
            stacks.append(chain)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.setprofile(on_call)
        try:
            line = inspect.currentframe().f_lineno + 1
            fit(X, y)
        finally:
            sys.setprofile(None)
    found = [w for w in caught if issubclass(w.category, BoundsWarning)]
    assert found, "the bounds exclude most of the data: a BoundsWarning was expected"
    return found, line, stacks


def _is_wrapper(filename: str) -> bool:
    """mutmut's trampoline: under `make mutate` every call of a mutated function passes
    through it (two frames a call), so no fixed stacklevel reaches the same frame there."""
    return filename.endswith(os.path.join("mutmut", "mutation", "trampoline.py"))


@pytest.mark.parametrize(
    "make, target",
    [
        # X mostly outside its declared box (resolve_feature_bounds)
        (lambda: DPLinearRegression(bounds_X=(-0.1, 0.1), bounds_y=(-1, 1), random_state=0), "X"),
        # y mostly outside its declared range (resolve_target_bounds)
        (lambda: DPLinearRegression(bounds_X=(-1, 1), bounds_y=(-0.01, 0.01), random_state=0), "y"),
        (
            lambda: DPLogisticRegression(classes=[0, 1], bounds_X=(-0.1, 0.1), random_state=0),
            "X",
        ),
    ],
)
def test_the_bounds_warning_points_at_the_users_call_of_fit(make, target):
    X, y = _regression_data()
    est = make()
    if isinstance(est, DPLogisticRegression):
        y = (y > 0).astype(int)
    found, line, stacks = _bounds_warnings(est.fit, X, y)
    assert len(found) == 1 and f"bounds_{target}" in str(found[0].message)
    # the stack when the BoundsWarning was issued: the one whose frames hold its source line
    # and this test's call of fit
    here, source = (__file__, line), (found[0].filename, found[0].lineno)
    (stack,) = [s for s in stacks if here in s and source in s]
    # its stacklevel counts the frames from the warning to the user's call of fit, wrappers
    # not counted: the frame that many places out is where the warning points (under `make
    # mutate` a trampoline frame, and those repeat: hence no stack.index(source)); without
    # wrappers it is that call itself
    assert stack[[f for f in stack if not _is_wrapper(f[0])].index(here)] == source
    if not any(_is_wrapper(f[0]) for f in stack):
        assert source == here


# --------------------------------------------------------------- row norms of an all-zero row


def test_an_all_zero_row_has_norm_exactly_zero_and_no_warning():
    Z = np.array([[0.0, 0.0, 0.0], [3.0, -4.0, 0.0], [0.0, -0.0, 0.0], [1e200, 0.0, -1e200]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norms = _robust_norms(Z)
    assert norms[0] == 0.0 and norms[2] == 0.0
    assert norms[1] == 5.0
    assert norms[3] == pytest.approx(math.sqrt(2) * 1e200, rel=1e-15)


def test_fit_and_predict_with_an_all_zero_row_under_the_row_clip_do_not_warn():
    # 9 features in (-1, 1): the box's radius is 3, the automatic row clip 1, so every row's
    # norm is measured; the origin's norm is 0 and it is not moved
    X, y = _regression_data(d=9)
    X[0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = DPLinearRegression(
            epsilon=1.0, bounds_X=(-1, 1), bounds_y=(-1, 1), random_state=0
        ).fit(X, y)
        assert reg.data_norm_ == pytest.approx(1.0)
        at_origin = reg.predict(np.zeros((1, 9)))
    assert at_origin[0] == pytest.approx(reg.intercept_, abs=1e-12)


# ------------------------------------------------------------------ the primality test's range


def test_the_primality_test_answers_just_below_2_to_the_61():
    assert _is_prime(2**61 - 1)  # a Mersenne prime
    assert not _is_prime(2**61 - 3)  # 29 x 79511827903920481


@pytest.mark.parametrize("q", [2**61, 2**61 + 1, 2**62 - 57, 2**62, 2**62 + 1])
def test_the_primality_test_refuses_from_2_to_the_61_with_its_message(q):
    with pytest.raises(
        ValueError, match=f"^{re.escape(f'the primality test takes 2 <= q < 2^61, got {q}')}$"
    ):
        _is_prime(q)
