"""A leading ColumnTransformer -> client-side preprocessing plus a per-feature affine map.

Supported per-column transformers: "passthrough", "drop", SimpleImputer (NaN/None missing
values; no indicator), OneHotEncoder (any handle_unknown, drop, infrequent categories),
affine scalers, and Pipelines of those (imputer first). What is not linear (imputation, one-hot)
runs on the client in plaintext; scalers are folded into W and b by heml.export.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UnsupportedEstimatorError
from .preprocessing import Column, Preprocessing

_SCALERS = {"StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"}


def _steps(transformer: Any) -> list[Any]:
    if transformer in ("passthrough", None):
        return []
    if type(transformer).__name__ == "Pipeline":
        return [s for _, s in transformer.steps if s not in (None, "passthrough")]
    return [transformer]


def _column_names(ct: Any, columns: Any, inputs: list[str]) -> list[str]:
    if callable(columns):
        raise UnsupportedEstimatorError("ColumnTransformer column selectors must be explicit")
    cols = [columns] if isinstance(columns, str | int | np.integer) else list(columns)
    if cols and all(isinstance(c, bool | np.bool_) for c in cols):
        cols = [i for i, flag in enumerate(cols) if flag]
    names = []
    for c in cols:
        if isinstance(c, int | np.integer):
            names.append(inputs[int(c)])
        else:
            names.append(str(c))
    return names


def _imputer_values(imputer: Any, n: int) -> list[Any]:
    if getattr(imputer, "add_indicator", False):
        raise UnsupportedEstimatorError("SimpleImputer(add_indicator=True) is not supported")
    mv = getattr(imputer, "missing_values", np.nan)
    if not (mv is None or (isinstance(mv, float) and np.isnan(mv))):
        raise UnsupportedEstimatorError(
            f"SimpleImputer(missing_values={mv!r}) is not supported; use NaN/None for missing"
        )
    stats = list(imputer.statistics_)
    if len(stats) != n:
        raise UnsupportedEstimatorError(
            "SimpleImputer dropped all-missing columns (keep_empty_features=False); refit with "
            "keep_empty_features=True or drop those columns"
        )
    return [v.item() if isinstance(v, np.generic) else v for v in stats]


def column_transformer_stage(ct: Any, feature_names: Any):
    """(Preprocessing, _Affine) for a fitted ColumnTransformer."""
    from ._export import _Affine, _affine_of  # local: _export imports this module lazily

    fitted_inputs = getattr(ct, "feature_names_in_", None)
    if feature_names is not None:
        inputs = [str(n) for n in feature_names]
    elif fitted_inputs is not None:
        inputs = [str(n) for n in fitted_inputs]
    else:
        inputs = [f"x{i}" for i in range(ct.n_features_in_)]
    if len(inputs) != ct.n_features_in_:
        raise UnsupportedEstimatorError(
            f"feature_names has {len(inputs)} names; the ColumnTransformer saw {ct.n_features_in_}"
        )

    columns: list[Column] = []
    scales: list[float] = []
    offsets: list[float] = []
    lowers: list[float] = []
    uppers: list[float] = []
    for name, transformer, cols in ct.transformers_:
        if transformer == "drop":
            continue
        names = _column_names(ct, cols, inputs)
        if not names:
            continue
        steps = _steps(transformer)
        impute: list[Any] = [None] * len(names)
        if steps and type(steps[0]).__name__ == "SimpleImputer":
            impute = _imputer_values(steps[0], len(names))
            steps = steps[1:]
        encoder = None
        if steps and type(steps[0]).__name__ == "OneHotEncoder":
            encoder = steps[0]
            steps = steps[1:]
        if encoder is not None:
            block = _onehot_columns(encoder, names, impute)
            width = sum(c.n_features for c in block)
            lo, hi = np.zeros(width), np.ones(width)
        else:
            block = [Column(name=n, impute=v) for n, v in zip(names, impute, strict=True)]
            width = len(block)
            lo = hi = np.full(width, np.nan)
        affine = _Affine(np.ones(width), np.zeros(width), lo, hi)
        for step in steps:
            kind = type(step).__name__
            if kind not in _SCALERS:
                raise UnsupportedEstimatorError(
                    f"ColumnTransformer part {name!r} uses {kind}; supported: SimpleImputer, "
                    "OneHotEncoder and affine scalers"
                )
            nxt = _affine_of(step, name, width)
            if (
                encoder is None
                and nxt.default_lower is not None
                and np.all(np.isnan(affine.default_lower))
            ):
                lo, hi = nxt.default_lower, nxt.default_upper  # already in raw space (first step)
            else:
                lo, hi = affine.default_lower, affine.default_upper
            affine = _Affine(
                affine.scale * nxt.scale, affine.offset * nxt.scale + nxt.offset, lo, hi
            )
        columns.extend(block)
        scales.extend(affine.scale)
        offsets.extend(affine.offset)
        lowers.extend(affine.default_lower)
        uppers.extend(affine.default_upper)

    pre = Preprocessing(tuple(columns), tuple(inputs))
    return pre, _Affine(np.array(scales), np.array(offsets), np.array(lowers), np.array(uppers))


def _onehot_columns(encoder: Any, names: list[str], impute: list[Any]) -> list[Column]:
    handle = getattr(encoder, "handle_unknown", "error")
    if handle == "warn":
        handle = "ignore"
    infrequent = getattr(encoder, "infrequent_categories_", None)
    drop_idx = getattr(encoder, "drop_idx_", None)
    out_names = list(encoder.get_feature_names_out(names))
    columns, pos = [], 0
    for i, name in enumerate(names):
        cats = [c.item() if isinstance(c, np.generic) else c for c in encoder.categories_[i]]
        infr = []
        if infrequent is not None and infrequent[i] is not None:
            infr = [c.item() if isinstance(c, np.generic) else c for c in infrequent[i]]
        drop = None
        if drop_idx is not None and drop_idx[i] is not None:
            if infr:
                raise UnsupportedEstimatorError(
                    "OneHotEncoder with both drop and infrequent categories is not supported"
                )
            drop = cats[int(drop_idx[i])]
        width = len(cats) - len(infr) - (1 if drop is not None else 0) + (1 if infr else 0)
        columns.append(
            Column(
                name=name,
                kind="categorical",
                impute=impute[i],
                categories=tuple(cats),
                handle_unknown=handle,
                drop=drop,
                infrequent=tuple(infr),
                feature_names=tuple(out_names[pos : pos + width]),
            )
        )
        pos += width
    return columns
