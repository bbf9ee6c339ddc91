"""Per-feature scaling taken from public bounds, never from the data.

The DP estimators centre the bounds box and scale it by one number, which suits standardized
features. Raw features on different scales (an income in dollars beside a ratio) would then
leave the small-range ones almost no weight under the noise: heml train and heml audit first
map each feature to [-1, 1] with its declared bounds (a public affine map, so no privacy cost)
and fit with ``bounds_X=(-1, 1)``. The exported model folds the map back into W and b.

``cli_estimator`` and ``export_fitted`` are the one place that decides what those two commands
fit and export.
"""

from __future__ import annotations

import numpy as np


def bounds_map(lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """(center, half width) of each feature's bounds; a zero width becomes 1."""
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    half = (hi - lo) / 2.0
    return (lo + hi) / 2.0, np.where(half > 0, half, 1.0)


def normalize(X, center, half_width) -> np.ndarray:
    """Raw features -> (x - center) / half_width (module-level: picklable for joblib)."""
    return (np.asarray(X, dtype=np.float64) - center) / half_width


def clip_normalize(X, center, half_width) -> np.ndarray:
    """``normalize`` of X clipped to center ± half_width first: a huge value cannot overflow
    to inf in the division (one such record made the fit fail after the spend while its
    neighbour succeeded; found by review). The estimator clips to [-1, 1] anyway."""
    X = np.clip(np.asarray(X, dtype=np.float64), center - half_width, center + half_width)
    return normalize(X, center, half_width)


def scaled(estimator, lower, upper):
    """A pipeline that maps features to [-1, 1] by the bounds, then fits ``estimator``; the
    first step learns nothing from the data."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    center, half = bounds_map(lower, upper)
    step = FunctionTransformer(clip_normalize, kw_args={"center": center, "half_width": half})
    return Pipeline([("bounds", step), ("model", estimator)])


def exportable(fitted_scaled, lower, upper, feature_names=None):
    """The fitted ``scaled`` pipeline with its map as a StandardScaler whose statistics are the
    public bounds, so heml.export folds it into the model."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    center, half = bounds_map(lower, upper)
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = center, half, half**2
    scaler.n_features_in_ = center.size
    scaler.n_samples_seen_ = 0
    if feature_names is not None:
        scaler.feature_names_in_ = np.asarray([str(c) for c in feature_names], dtype=object)
    return Pipeline([("bounds", scaler), ("model", fitted_scaled[-1])])


def per_feature(bounds) -> bool:
    """True for (lower, upper) arrays of one bound per feature (not one pair for all, nor
    None, "data" or a PrivateBounds: bounds the estimator finds itself)."""
    return isinstance(bounds, tuple | list) and np.ndim(bounds[0]) == 1


def cli_estimator(
    task: str,
    *,
    epsilon: float,
    delta: float,
    bounds,
    target_bounds=None,
    random_state=None,
    accountant=None,
    classes=None,
):
    """What ``heml train`` fits and ``heml audit`` attacks: DPLinearRegression (task
    "regression") or DPLogisticRegression with the public label set ``classes``, behind the
    bounds map when bounds are per feature."""
    from ._linear import DPLinearRegression
    from ._logistic import DPLogisticRegression

    scale = per_feature(bounds)
    bounds_X = (-1.0, 1.0) if scale else bounds
    if task == "regression":
        est = DPLinearRegression(
            epsilon=epsilon,
            delta=delta,
            bounds_X=bounds_X,
            bounds_y=target_bounds,
            accountant=accountant,
            random_state=random_state,
        )
    else:
        est = DPLogisticRegression(
            epsilon=epsilon,
            delta=delta,
            classes=classes,
            bounds_X=bounds_X,
            accountant=accountant,
            random_state=random_state,
        )
    return scaled(est, *bounds) if scale else est


def export_fitted(fitted, *, name: str, bounds, feature_names, out_of_bounds: str = "clip"):
    """heml.export of a fitted ``cli_estimator``; per-feature bounds are declared exactly (not
    refolded through the scaling, which would round them). ``out_of_bounds`` is the served
    model's policy for inputs outside its bounds, the same whatever form the bounds took
    ("clip", like the training data, by default; or "error")."""
    import heml

    if not per_feature(bounds):
        return heml.export(fitted, name=name, out_of_bounds=out_of_bounds)
    return heml.export(
        exportable(fitted, *bounds, feature_names),
        name=name,
        bounds=bounds,
        out_of_bounds=out_of_bounds,
    )
