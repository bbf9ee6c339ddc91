"""heml.export: fitted scikit-learn linear models and pipelines -> LinearModel.

Only public fitted attributes are read (``coef_``, ``intercept_``, ``classes_``, scaler
statistics). Affine scalers are folded into W and b; what is not linear (imputation, one-hot
encoding, clipping) becomes client-side preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import links
from .errors import ModelError, UnsupportedEstimatorError
from .model import DEFAULT_TOLERANCE, LinearModel
from .preprocessing import Bounds, Column, Preprocessing, RowNorm

# Default bounds when the user gives none, derived from a scaler's training statistics.
STD_BOUND_SIGMAS = 20.0  # StandardScaler / RobustScaler: center ± 20 scales
RANGE_MARGIN = 1.0  # MinMaxScaler: [min - 1·range, max + 1·range]; MaxAbsScaler: ±2·max_abs

_REGRESSORS_IDENTITY = {
    "LinearRegression",
    "Ridge",
    "RidgeCV",
    "Lasso",
    "LassoCV",
    "ElasticNet",
    "ElasticNetCV",
    "SGDRegressor",
    "HuberRegressor",
    "Lars",
    "LarsCV",
    "LassoLars",
    "LassoLarsCV",
    "LassoLarsIC",
    "OrthogonalMatchingPursuit",
    "OrthogonalMatchingPursuitCV",
    "BayesianRidge",
    "ARDRegression",
    "TheilSenRegressor",
    "QuantileRegressor",
    "LinearSVR",
    "PassiveAggressiveRegressor",
    "MultiTaskLasso",
    "MultiTaskLassoCV",
    "MultiTaskElasticNet",
    "MultiTaskElasticNetCV",
    "DPLinearRegression",
}
_REGRESSORS_GLM = {"PoissonRegressor", "GammaRegressor", "TweedieRegressor"}
_MARGIN_CLASSIFIERS = {
    "LinearSVC",
    "RidgeClassifier",
    "RidgeClassifierCV",
    "Perceptron",
    "PassiveAggressiveClassifier",
}
_LOGISTIC = {"LogisticRegression", "LogisticRegressionCV", "DPLogisticRegression"}

SUPPORTED = sorted(
    _REGRESSORS_IDENTITY
    | _REGRESSORS_GLM
    | _MARGIN_CLASSIFIERS
    | _LOGISTIC
    | {"SGDClassifier", "Pipeline(scaler..., estimator)"}
)


@dataclass
class _Affine:
    """Per-feature affine map x -> x * scale + offset, plus optional bounds it implies."""

    scale: np.ndarray
    offset: np.ndarray
    default_lower: np.ndarray | None = None  # raw-space bounds derived from training statistics
    default_upper: np.ndarray | None = None
    clips: bool = False  # the transformer itself clips to its bounds (MinMaxScaler(clip=True))


def export(
    estimator: Any,
    *,
    name: str,
    feature_names: Sequence[str] | None = None,
    version: int = 1,
    bounds: Any = None,
    out_of_bounds: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    model_privacy: bool = False,
    max_predictions_per_key: int | None = None,
) -> LinearModel:
    """Turn a fitted scikit-learn linear model (or pipeline) into a servable LinearModel.

    Parameters
    ----------
    estimator : fitted estimator or Pipeline
        A linear regressor or classifier, optionally after a ``ColumnTransformer`` and affine
        scalers (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler).
    name : str
        The name the model is served under.
    feature_names : sequence of str, optional
        Names of the raw input columns; defaults to the names the estimator was fitted with
        (``feature_names_in_``) or ``x0, x1, …``.
    version : int, default=1
    bounds : (lower, upper), optional
        Declared bounds of the raw numeric inputs: scalars or one value per input. Encrypted
        scoring is exact inside them; they fix the HE parameters. Default: from the DP
        estimator's clipping bounds, else from the first scaler's statistics (mean ± 20 std,
        data range ± 100 %), else required.
    out_of_bounds : {"error", "clip"}, optional
        What clients do with values outside the bounds. Default "clip" for DP models and
        self-clipping scalers (that is what training saw), "error" otherwise.
    tolerance : float, default=1e-4
        Allowed |encrypted - plaintext| error on scores; parameters are chosen to meet it.
    model_privacy : bool, default=False
        Serve only in model-privacy mode: replies re-randomized under the client's public key
        and noise-flooded (40-bit statistical hiding of the weights' noise contribution), with
        a lifetime quota per key below d predictions. Costs N=4096 over 108 bits, about 4x the
        bytes and time of the default path (docs/model-privacy.md).
    max_predictions_per_key : int, optional
        The quota for model-privacy mode: below d, and below
        ``heml.he.private.weight_equations_needed`` for the model's plan (crafted ciphertexts
        give that many precise equations about W; a larger quota is refused with ModelError).
        Default: d // 2 capped below that, at least 1.
    """
    steps, final = _split_pipeline(estimator)
    W, b, task, link, classes, output_ndim = _final_estimator(final)
    d_final = W.shape[1]

    preprocessing, column_affine = _column_stage(steps, estimator, feature_names)
    affine = column_affine
    for step_name, step in steps:
        if _is_column_transformer(step):
            continue
        affine = _compose(affine, _affine_of(step, step_name, d_final))

    if preprocessing is None:
        names = _input_names(estimator, final, feature_names, d_final)
        preprocessing = Preprocessing.numeric(names)
    d = preprocessing.n_features
    if d != d_final:
        raise ModelError(
            f"the pipeline produces {d} features but the final estimator expects {d_final}"
        )
    if affine is None:
        affine = _Affine(np.ones(d), np.zeros(d))

    # fold the affine map into the weights: W (x*s + o) + b = (W*s) x + (W o + b)
    W_model = W * affine.scale[None, :]
    b_model = b + W @ affine.offset

    dp = dict(getattr(final, "dp_guarantee_", None) or {})
    policy, lo, hi = _resolve_bounds(bounds, out_of_bounds, final, affine, preprocessing, dp)
    encode_lo, encode_hi = lo, hi
    data_norm = getattr(final, "data_norm_", None)
    if data_norm is not None and np.isfinite(data_norm):
        # the DP estimator scaled rows onto a norm ball in its own input space: clients do the
        # same, and the encoder must cover the points that scaling toward the origin can reach
        scale, offset = affine.scale, affine.offset
        feature_map = getattr(final, "feature_map_", None)
        if feature_map is not None:  # bounds estimated by the estimator: rows are clipped on
            center, half = (np.asarray(v, dtype=np.float64) for v in feature_map)  # (x-c)/h
            scale, offset = scale / half, (offset - center) / half
        row_norm = RowNorm(float(data_norm), scale, offset)
        preprocessing = Preprocessing(preprocessing.columns, preprocessing.inputs, row_norm)
        origin = row_norm.origin()
        encode_lo, encode_hi = np.minimum(lo, origin), np.maximum(hi, origin)
    bounds_obj = Bounds(lo, hi, policy, encode_lo, encode_hi)
    if model_privacy:
        max_predictions_per_key = private_quota(
            W_model, b_model, bounds_obj, tolerance, max_predictions_per_key
        )
    return LinearModel(
        name=name,
        coef=W_model,
        intercept=b_model,
        task=task,
        link=link,
        classes=classes,
        preprocessing=preprocessing,
        bounds=bounds_obj,
        version=version,
        output_ndim=output_ndim,
        dp=dp,
        estimator=_qualname(final),
        tolerance=tolerance,
        privacy={
            "enabled": True,
            "max_predictions_per_key": max_predictions_per_key,
        }
        if model_privacy
        else None,
    )


# ---------------------------------------------------------------------- pipeline structure
def _split_pipeline(estimator: Any) -> tuple[list[tuple[str, Any]], Any]:
    if type(estimator).__name__ == "Pipeline" and hasattr(estimator, "steps"):
        steps = [(n, s) for n, s in estimator.steps[:-1] if s not in (None, "passthrough")]
        final = estimator.steps[-1][1]
        if final in (None, "passthrough"):
            raise UnsupportedEstimatorError("the pipeline's last step must be an estimator")
        if any(_is_column_transformer(s) for _, s in steps[1:]):
            raise UnsupportedEstimatorError("a ColumnTransformer must be the pipeline's first step")
        return steps, final
    return [], estimator


def _is_column_transformer(step: Any) -> bool:
    return type(step).__name__ == "ColumnTransformer"


def _qualname(obj: Any) -> str:
    t = type(obj)
    module = t.__module__
    if module.startswith("sklearn."):
        module = ".".join(module.split(".")[:2])
    elif module.startswith("heml.dp"):
        module = "heml.dp"
    return f"{module}.{t.__name__}"


def _input_names(estimator: Any, final: Any, feature_names: Any, d: int) -> list[str]:
    if feature_names is not None:
        names = [str(n) for n in feature_names]
        if len(names) != d:
            raise ModelError(f"feature_names has {len(names)} names for {d} features")
    else:
        fitted = getattr(estimator, "feature_names_in_", None)
        if fitted is None:
            fitted = getattr(final, "feature_names_in_", None)
        names = [str(n) for n in fitted] if fitted is not None else [f"x{i}" for i in range(d)]
    if len(set(names)) != len(names):
        raise ModelError("feature names must be distinct")
    return names


# ---------------------------------------------------------------------- final estimator
def _final_estimator(est: Any):
    kind = type(est).__name__
    if not hasattr(est, "coef_"):
        if kind in SUPPORTED or kind == "SGDClassifier":
            raise ModelError(f"{kind} is not fitted; call fit before heml.export")
        raise UnsupportedEstimatorError(
            f"heml.export cannot export {kind}: only linear models are supported "
            f"({', '.join(SUPPORTED)})"
        )
    coef = est.coef_
    if hasattr(coef, "toarray"):
        coef = coef.toarray()
    W = np.array(coef, dtype=np.float64)
    intercept = np.array(getattr(est, "intercept_", 0.0), dtype=np.float64).reshape(-1)

    if kind in _REGRESSORS_IDENTITY or kind in _REGRESSORS_GLM:
        link = links.IDENTITY
        if kind in _REGRESSORS_GLM:
            link = links.EXP if _glm_uses_log_link(est) else links.IDENTITY
        output_ndim = W.ndim
        W2 = W.reshape(1, -1) if W.ndim == 1 else W
        b = intercept if intercept.size == W2.shape[0] else np.full(W2.shape[0], intercept[0])
        return W2, b, "regression", link, None, max(output_ndim, 1)

    if kind in _LOGISTIC or kind == "SGDClassifier" or kind in _MARGIN_CLASSIFIERS:
        classes = np.asarray(est.classes_)
        if classes.size < 2:
            raise ModelError(f"{kind} was fitted on a single class")
        binary = classes.size == 2
        W2 = W.reshape(1, -1) if W.ndim == 1 else W
        if binary and W2.shape[0] != 1:
            raise ModelError(f"binary {kind} has {W2.shape[0]} coefficient rows, expected 1")
        b = intercept if intercept.size == W2.shape[0] else np.full(W2.shape[0], intercept[0])
        task = "binary" if binary else "multiclass"
        if kind in _LOGISTIC:
            multi = getattr(est, "multi_class", "auto")
            if binary:
                link = links.LOGISTIC
            elif multi == "ovr" or (multi == "auto" and getattr(est, "solver", "") == "liblinear"):
                link = links.OVR_LOGISTIC
            else:
                link = links.SOFTMAX
        elif kind == "SGDClassifier":
            loss = getattr(est, "loss", "hinge")
            if loss == "log_loss":
                link = links.LOGISTIC if binary else links.OVR_LOGISTIC
            elif loss == "modified_huber":
                link = links.MODIFIED_HUBER
            else:
                link = links.NO_PROBABILITY
        else:
            link = links.NO_PROBABILITY
        return W2, b, task, link, classes, 1

    raise UnsupportedEstimatorError(
        f"heml.export cannot export {kind}: supported estimators are {', '.join(SUPPORTED)}"
    )


def _glm_uses_log_link(est: Any) -> bool:
    kind = type(est).__name__
    if kind in ("PoissonRegressor", "GammaRegressor"):
        return True
    link = getattr(est, "link", "auto")
    power = getattr(est, "power", 0.0)
    if link == "auto":
        return power > 0
    return link == "log"


# ---------------------------------------------------------------------- transformers
def _affine_of(step: Any, step_name: str, d: int) -> _Affine:
    kind = type(step).__name__
    ones, zeros = np.ones(d), np.zeros(d)
    if kind == "StandardScaler":
        scale = getattr(step, "scale_", None)
        mean = getattr(step, "mean_", None)
        s = 1.0 / np.asarray(scale, dtype=np.float64) if scale is not None else ones
        m = np.asarray(mean, dtype=np.float64) if mean is not None else zeros
        var = getattr(step, "var_", None)
        std = np.sqrt(np.asarray(var, dtype=np.float64)) if var is not None else None
        lo = hi = None
        if mean is not None and std is not None:
            width = np.where(std > 0, std, 1.0) * STD_BOUND_SIGMAS
            lo, hi = m - width, m + width
        offset = -m * s if getattr(step, "with_mean", True) and mean is not None else zeros
        return _check(_Affine(s, offset, lo, hi), step_name, d)
    if kind == "MinMaxScaler":
        rng = np.where(step.data_range_ > 0, step.data_range_, 1.0)
        clip = bool(getattr(step, "clip", False))
        if clip:
            lo, hi = step.data_min_.astype(np.float64), step.data_max_.astype(np.float64)
        else:
            lo = step.data_min_ - RANGE_MARGIN * rng
            hi = step.data_max_ + RANGE_MARGIN * rng
        return _check(
            _Affine(step.scale_.astype(np.float64), step.min_.astype(np.float64), lo, hi, clip),
            step_name,
            d,
        )
    if kind == "MaxAbsScaler":
        mx = np.where(step.max_abs_ > 0, step.max_abs_, 1.0)
        return _check(
            _Affine(1.0 / step.scale_, zeros, -(1 + RANGE_MARGIN) * mx, (1 + RANGE_MARGIN) * mx),
            step_name,
            d,
        )
    if kind == "RobustScaler":
        s = 1.0 / step.scale_ if step.scale_ is not None else ones
        c = step.center_ if step.center_ is not None else zeros
        lo = hi = None
        if step.scale_ is not None:
            width = np.where(step.scale_ > 0, step.scale_, 1.0) * STD_BOUND_SIGMAS
            lo, hi = c - width, c + width
        return _check(
            _Affine(np.asarray(s, float), -np.asarray(c, float) * s, lo, hi), step_name, d
        )
    if kind == "FunctionTransformer" and getattr(step, "func", None) is None:
        return _Affine(ones, zeros)
    raise UnsupportedEstimatorError(
        f"pipeline step {step_name!r} ({kind}) is not supported: heml folds affine scalers "
        "(StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler) into the model; a "
        "ColumnTransformer may come first"
    )


def _check(a: _Affine, step_name: str, d: int) -> _Affine:
    if a.scale.shape != (d,):
        raise ModelError(f"step {step_name!r} was fitted on {a.scale.size} features, expected {d}")
    return a


def _compose(first: _Affine | None, second: _Affine) -> _Affine:
    """Apply ``first`` then ``second``; default bounds come from the earliest step that has them."""
    if first is None:
        return second
    scale = first.scale * second.scale
    offset = first.offset * second.scale + second.offset
    lo, hi, clips = first.default_lower, first.default_upper, first.clips
    if second.default_lower is not None:
        # second's bounds are in first's output space: map back through first (x = (y - o)/s)
        a = (second.default_lower - first.offset) / first.scale
        c = (second.default_upper - first.offset) / first.scale
        mapped_lo, mapped_hi = np.minimum(a, c), np.maximum(a, c)
        if lo is None:
            lo, hi, clips = mapped_lo, mapped_hi, second.clips
        else:
            lo = np.where(np.isnan(lo), mapped_lo, lo)
            hi = np.where(np.isnan(hi), mapped_hi, hi)
    return _Affine(scale, offset, lo, hi, clips)


def _column_stage(steps, estimator, feature_names):
    """Preprocessing and affine map from a leading ColumnTransformer (None when there is none)."""
    if not steps or not _is_column_transformer(steps[0][1]):
        return None, None
    from ._export_columns import column_transformer_stage

    return column_transformer_stage(steps[0][1], feature_names)


def _resolve_bounds(bounds, out_of_bounds, final, affine: _Affine, pre: Preprocessing, dp: dict):
    d = pre.n_features
    policy = out_of_bounds
    indicator = np.array(_indicator_mask(pre))
    if bounds is not None:
        lo, hi = _bounds_arrays(bounds, pre)
        policy = policy or "error"
    elif getattr(final, "bounds_X_", None) is not None:
        # the DP estimator clipped its (transformed) inputs to bounds_X_: map back to raw inputs
        blo, bhi = (np.broadcast_to(np.asarray(v, dtype=np.float64), (d,)) for v in final.bounds_X_)
        a = (blo - affine.offset) / affine.scale
        c = (bhi - affine.offset) / affine.scale
        lo, hi = np.minimum(a, c), np.maximum(a, c)
        policy = policy or "clip"
    elif affine.default_lower is not None and not np.any(
        np.isnan(affine.default_lower) & ~indicator
    ):
        lo, hi = affine.default_lower.astype(np.float64), affine.default_upper.astype(np.float64)
        policy = policy or ("clip" if affine.clips else "error")
    elif indicator.all():
        lo, hi = np.zeros(d), np.ones(d)
        policy = policy or "error"
    else:
        names = pre.feature_names
        lacking = [names[j] for j in range(d) if not indicator[j]]
        if affine.default_lower is not None:
            lacking = [
                names[j] for j in range(d) if np.isnan(affine.default_lower[j]) and not indicator[j]
            ]
        shown = ", ".join(repr(n) for n in lacking[:5]) + (", …" if len(lacking) > 5 else "")
        raise ModelError(
            "heml needs declared input bounds to choose encryption parameters (so no result can "
            f"wrap around the modulus); none are known for {shown}. Pass bounds=(lower, upper) "
            "with scalars or one value per numeric input, from domain knowledge or with a "
            "margin around the training range so new rows fit, e.g. lo, hi = X_train.min(0), "
            "X_train.max(0); bounds=(lo - (hi - lo), hi + (hi - lo)), out_of_bounds='clip'; "
            "or put a scaler (StandardScaler, MinMaxScaler) before the estimator so heml can "
            "derive them."
        )
    lo = np.where(indicator, 0.0, lo)
    hi = np.where(indicator, 1.0, hi)
    if dp and dp.get("private"):
        dp.setdefault("bounds", {"lower": lo.tolist(), "upper": hi.tolist(), "policy": policy})
    return policy, lo, hi


def _indicator_mask(pre: Preprocessing) -> list[bool]:
    mask: list[bool] = []
    for c in pre.columns:
        mask.extend([c.kind == "categorical"] * c.n_features)
    return mask


def _bounds_arrays(bounds: Any, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """User bounds over raw numeric inputs -> per model feature arrays (indicators get [0, 1])."""
    try:
        lower, upper = bounds
    except (TypeError, ValueError) as exc:
        raise ModelError("bounds must be a (lower, upper) pair") from exc
    numeric = [c for c in pre.columns if c.kind == "numeric"]
    m = len(numeric)
    try:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (m,)).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (m,)).copy()
    except ValueError as exc:
        raise ModelError(
            f"bounds must be scalars or have one value per numeric input ({m}): {exc}"
        ) from exc
    out_lo, out_hi, i = [], [], 0
    for c in pre.columns:
        if c.kind == "numeric":
            out_lo.append(lo[i])
            out_hi.append(hi[i])
            i += 1
        else:
            out_lo.extend([0.0] * c.n_features)
            out_hi.extend([1.0] * c.n_features)
    return np.array(out_lo), np.array(out_hi)


__all__ = ["SUPPORTED", "Column", "export"]


def private_quota(coef, intercept, bounds: Bounds, tolerance: float, quota: int | None) -> int:
    """The lifetime quota per key of a model-privacy model: ``quota`` if given (refused with
    ModelError at or above the crafted-ciphertext estimate,
    heml.he.private.check_private_quota), else d // 2 capped below that estimate, at least 1.
    At d = 4 that is 1: three crafted slots give W exactly (docs/model-privacy.md)."""
    from .he.private import check_private_quota, make_private_plan, max_private_quota

    d = np.asarray(coef).shape[1]
    plan = make_private_plan(coef, intercept, bounds.center, bounds.half_width, tolerance=tolerance)
    if quota is None:
        return max(1, min(d // 2, max_private_quota(plan, d)))
    if isinstance(quota, int) and 1 <= quota < max(d, 2):
        check_private_quota(plan, d, quota)
    return quota  # LinearModel checks the type and the range [1, d-1]
