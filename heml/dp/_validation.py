"""Input checks, data bounds and clipping shared by the DP estimators."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._warnings import BoundsWarning

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.5
    _sk_validate_data = None

# With no data_norm, rows are clipped to this fraction of the L2 radius of the bounds box. For
# features standardized and clipped at ±3 that is √d, the typical norm of a standardized row.
# Fixed a priori (public), chosen on synthetic data, never on the benchmark sets.
AUTO_NORM_FRACTION = 1.0 / 3.0


def validate_data(est, X, y="no_validation", *, reset: bool, y_numeric: bool = False):
    """scikit-learn's validate_data: finite float64 X, feature count and names recorded/checked.

    Pass ``y`` in ``fit`` (``None`` then raises scikit-learn's "requires y" error); leave it out
    in predict methods.
    """
    kwargs = {"dtype": np.float64, "reset": reset}
    if not (isinstance(y, str) and y == "no_validation"):
        kwargs["y_numeric"] = y_numeric
    if _sk_validate_data is not None:
        return _sk_validate_data(est, X, y, **kwargs)
    return est._validate_data(X, y, **kwargs)  # pragma: no cover - scikit-learn 1.5


def check_privacy_params(epsilon, delta) -> tuple[float, float]:
    """ε > 0 (inf allowed: no privacy) and 0 < δ < 1, as floats."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    eps = float(epsilon)
    if math.isnan(eps) or eps <= 0:
        raise ValueError(f"epsilon must be > 0 (inf for no privacy), got {epsilon!r}")
    if math.isfinite(eps) and not MIN_EPSILON <= eps <= MAX_FINITE_EPSILON:
        raise ValueError(
            f"epsilon must be in [{MIN_EPSILON:g}, {MAX_FINITE_EPSILON:g}] or inf (no privacy), "
            f"got {epsilon!r}"
        )
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    dlt = float(delta)
    if math.isinf(eps):
        if not 0 <= dlt <= 1:
            raise ValueError(f"delta must be in [0, 1], got {delta!r}")
        return eps, dlt
    if not MIN_DELTA <= dlt < 1 or math.isnan(dlt):
        raise ValueError(
            f"delta must be in [{MIN_DELTA:g}, 1) (the Gaussian mechanisms here need delta > 0), "
            f"got {delta!r}"
        )
    return eps, dlt


def check_delta_vs_n(epsilon: float, delta: float, n: int) -> None:
    """δ must be below 1/n, or the guarantee allows publishing a whole record."""
    if math.isfinite(epsilon) and delta >= 1.0 / n:
        raise ValueError(
            f"delta={delta:g} is not below 1/n = {1.0 / n:g} (n_samples = {n}): such a "
            f"delta permits releasing a record outright. Use delta < 1/n (e.g. {0.1 / n:.1g})."
        )


# Declared bounds above this magnitude are refused (public): the mechanisms square them and
# sum n of them, which overflows float64 near 1e154.
MAX_BOUND = 1e100
# ...and a row bound or target half width below this one (but not 0): its square underflowed
# to 0, so AdaSSP's sensitivities B², 2·B·B_y became 0 and its release carried no noise, and
# DP-GD divided by 0 after the spend (found by review: data_norm = 1e-170).
MIN_SCALE = 1e-100
# Finite ε above this is refused (ε = inf means no privacy): dp-accounting's calibration failed
# near 1e200 after the spend, and the estimated-bounds plan at 1e12 with a root-finder's message
# (found by review); up to 1e6 every mechanism and plan runs (tests/test_dp_review5.py).
MAX_FINITE_EPSILON = 1e6
# ...and ε, δ below these: dp-accounting's Gaussian calibration stops growing its multiplier near
# 5e15 (log1p cancels), so at ε = δ = 1e-20 the release was 6e3 times δ; ε ≥ 1e-3 and δ ≥ 1e-30
# keep every calibration and root here exact to well within their margins (found by review)
MIN_EPSILON = 1e-3
MIN_DELTA = 1e-30


def parse_bounds(bounds, d: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) as scalars or length-d arrays -> two finite float arrays of shape (d,)."""
    if not isinstance(bounds, tuple | list | np.ndarray):
        # a one-shot iterator would be consumed by the check made before the spend and refused
        # by the fit's own parse after it (found by review)
        raise ValueError(
            f"{name} must be a (lower, upper) pair of scalars or per-feature arrays, got {bounds!r}"
        )
    try:
        lower, upper = bounds
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a (lower, upper) pair of scalars or per-feature arrays, got {bounds!r}"
        ) from None
    try:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (d,)).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (d,)).copy()
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must hold scalars or one value per feature ({d}); got {bounds!r}: {exc}"
        ) from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"{name} must be finite numbers, got {bounds!r}")
    if max(float(np.max(np.abs(lo))), float(np.max(np.abs(hi)))) > MAX_BOUND:
        # squares and n-fold sums of the bounds (sensitivities, row norms) must stay finite:
        # wider bounds made the model NaN whatever the data (found by review)
        raise ValueError(f"{name} must lie within ±{MAX_BOUND:g}, got {bounds!r}")
    if np.any(lo > hi):
        j = int(np.flatnonzero(lo > hi)[0])
        raise ValueError(
            f"{name}: lower bound {lo[j]:g} is above upper bound {hi[j]:g} (index {j})"
        )
    return lo, hi


def check_data_norm(data_norm) -> float | None:
    if data_norm is None:
        return None
    if isinstance(data_norm, bool) or not isinstance(data_norm, numbers.Real):
        raise ValueError(f"data_norm must be a positive number or None, got {data_norm!r}")
    r = float(data_norm)
    if math.isnan(r) or r <= 0:
        raise ValueError(f"data_norm must be > 0 (inf: no row clipping), got {data_norm!r}")
    return r


def warn_if_mostly_outside(values: np.ndarray, lo, hi, name: str) -> None:
    """Warn (one line) when more than half of some column's values fall outside [lo, hi]."""
    outside = np.mean((values < lo) | (values > hi), axis=0)
    bad = int(np.sum(outside > 0.5))
    if bad:
        cols = values.shape[1]
        which = "the target" if name == "bounds_y" else f"{bad} of {cols} feature(s)"
        warnings.warn(
            f"{name}: most training values of {which} lie outside the declared bounds and are "
            f"clipped to them (worst column: {np.max(outside):.0%}); the bounds must be in the "
            "data's own units (-3,3 suits standardized features only); omit them to have them "
            "estimated with DP. (Computed from the training data, shown to you only.)",
            BoundsWarning,
            stacklevel=5,  # fit is wrapped by numpy_error_defaults
        )


def _estimated(bounds) -> bool:
    """None, "data" or a PrivateBounds: bounds the estimator must find itself."""
    from ._private_bounds import PrivateBounds

    return (
        bounds is None
        or isinstance(bounds, PrivateBounds)
        or (isinstance(bounds, str) and bounds == "data")
    )


def check_declared_bounds(est, d: int) -> None:
    """Parse the estimator's declared bounds (public parameters, no data).

    The estimators call it before they reserve the budget, so that bounds which cannot be used
    (reversed, NaN, the wrong length, beyond ±1e100, a row bound or target half width below
    1e-100) are refused with nothing spent; before, they were parsed after the reservation and
    a typo in ``bounds_X`` cost the fit's ε."""
    if implied_box(est.bounds_X, est.data_norm) or not _estimated(est.bounds_X):
        lo, hi, row_norm = declared_box(est.bounds_X, est.data_norm, d)
        _check_scale(row_bound(lo, hi, row_norm), "the row bound of bounds_X and data_norm")
    if hasattr(est, "bounds_y") and not _estimated(est.bounds_y):
        lo, hi = parse_bounds(est.bounds_y, 1, "bounds_y")
        _check_scale(float(hi[0] - lo[0]) / 2.0, "the half width of bounds_y")


def implied_box(bounds_X, data_norm) -> bool:
    """No bounds_X but a finite ``data_norm``: the row clip bounds every coordinate by it, so
    that box is declared by implication (nothing is read from the data)."""
    return bounds_X is None and data_norm is not None and math.isfinite(float(data_norm))


def _check_scale(value: float, what: str) -> None:
    if 0 < value < MIN_SCALE:
        raise ValueError(
            f"{what} is {value:g}, below {MIN_SCALE:g}: the mechanisms square it, which "
            "underflows; express the data in larger units"
        )


def declared_box(bounds_X, data_norm, d: int):
    """(lower, upper, row_norm) for declared ``bounds_X`` (or the box a finite ``data_norm``
    implies when ``bounds_X`` is None): public parameters only. ``row_norm`` None: no row clip."""
    R = check_data_norm(data_norm)
    if _estimated(bounds_X):  # None with a finite data_norm: the row clip implies the box
        lo, hi = np.full(d, -R), np.full(d, R)
    else:
        lo, hi = parse_bounds(bounds_X, d, "bounds_X")
    return lo, hi, _row_norm(lo, hi, R)


def _row_norm(lo: np.ndarray, hi: np.ndarray, R: float | None) -> float | None:
    """The row clip for the box [lo, hi]: ``R`` (default: a third of the box's L2 radius
    around 0), or None when the box already lies within it (no row clip)."""
    box_radius = _robust_norms(np.maximum(np.abs(lo), np.abs(hi))[None, :])[0]
    if R is None:
        R = AUTO_NORM_FRACTION * box_radius
    if R <= 0:  # all-zero box: nothing to scale
        R = 1.0
    return R if box_radius > R else None


def row_bound(lo: np.ndarray, hi: np.ndarray, row_norm: float | None) -> float:
    """The L2 bound B_x of a clipped row around the centre the mechanisms use (the box's
    middle without a row clip, 0 with one)."""
    center = (lo + hi) / 2.0 if row_norm is None else np.zeros_like(lo)
    box = float(_robust_norms(np.maximum(np.abs(lo - center), np.abs(hi - center))[None, :])[0])
    return box if row_norm is None else min(box, row_norm)


def resolve_feature_bounds(X: np.ndarray, bounds_X, data_norm, *, private: bool):
    """Per-feature box and row-norm clip to apply to X; nothing is read from the data at
    finite ε (estimated bounds go through ``_private_bounds.fit_with_estimated_bounds``).

    Returns (lower, upper, row_norm, source) where ``row_norm`` is None for no row clipping.
    """
    d = X.shape[1]
    R = check_data_norm(data_norm)
    if not _estimated(bounds_X):
        lo, hi, row_norm = declared_box(bounds_X, data_norm, d)
        warn_if_mostly_outside(X, lo, hi, "bounds_X")
        return lo, hi, row_norm, "declared"
    if implied_box(bounds_X, data_norm):
        lo, hi, row_norm = declared_box(None, data_norm, d)
        return lo, hi, row_norm, "implied by data_norm"
    if private:  # unreachable through the estimators: fail closed rather than leak
        raise RuntimeError("bounds_X must be declared or estimated with DP at finite epsilon")
    lo, hi = X.min(axis=0), X.max(axis=0)
    source = "read from the training data (epsilon=inf: no privacy claimed)"
    return lo, hi, _row_norm(lo, hi, R), source


def _robust_norms(Z: np.ndarray) -> np.ndarray:
    """Row L2 norms that do not overflow for finite values (each row scaled by its largest
    magnitude first): a row above ~1e154 would otherwise give inf and a warning that one
    record could switch on (found by review; tests/test_dp_extreme_records.py)."""
    scale = np.max(np.abs(Z), axis=1)
    safe = np.where(scale > 0, scale, 1.0)
    return scale * np.linalg.norm(Z / safe[:, None], axis=1)


def clip_rows(
    X: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    row_norm: float | None,
    feature_map: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Clip each feature to [lo, hi], then scale rows whose L2 norm exceeds row_norm onto it.

    With ``feature_map = (center, half_width)`` (bounds estimated by the estimator) the row
    norm is measured on (x - center) / half_width, the [-1, 1] space the model was fitted in,
    and rows are scaled toward ``center``.
    """
    Xc = np.clip(X, lo, hi)
    if row_norm is None:
        return Xc
    if feature_map is None:
        center, half = 0.0, 1.0
    else:
        center, half = feature_map
    Z = (Xc - center) / half
    norms = _robust_norms(Z)
    over = norms > row_norm
    if np.any(over):
        Xc[over] = center + Z[over] * (row_norm / norms[over])[:, None] * half
    return Xc


def resolve_target_bounds(y: np.ndarray, bounds_y, *, private: bool):
    """(lower, upper, source) of the target: declared, or (ε = ∞ only) the data's range."""
    if not _estimated(bounds_y):
        lo, hi = parse_bounds(bounds_y, 1, "bounds_y")
        warn_if_mostly_outside(np.asarray(y, dtype=np.float64)[:, None], lo, hi, "bounds_y")
        return float(lo[0]), float(hi[0]), "declared"
    if private:  # unreachable through the estimators: fail closed rather than leak
        raise RuntimeError("bounds_y must be declared or estimated with DP at finite epsilon")
    return float(y.min()), float(y.max()), "read from the training data (epsilon=inf)"
