"""Client-side preprocessing: raw input columns -> model features -> bounds check or clip.

Everything here runs in plaintext on the client before encryption (and in the plaintext
reference ``LinearModel.predict``). Affine scalers are not here: ``heml.export`` folds them into
W and b. What stays is what is not linear: column selection by name, imputation, one-hot
encoding, and clipping to the declared bounds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, ModelError, OutOfBoundsError

OUT_OF_BOUNDS_POLICIES = ("error", "clip")
HANDLE_UNKNOWN = ("error", "ignore", "infrequent_if_exist")


def _is_dataframe(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "iloc")


@dataclass(frozen=True)
class Column:
    """One raw input column and the model features it produces.

    kind "numeric": one feature, NaN replaced by ``impute`` when set.
    kind "categorical": one-hot indicators for ``categories``; unknown values follow
    ``handle_unknown`` as in scikit-learn's OneHotEncoder; ``drop`` removes one category.
    """

    name: str
    kind: str = "numeric"
    impute: Any = None
    categories: tuple = ()
    handle_unknown: str = "error"
    drop: Any = None
    infrequent: tuple = ()
    feature_names: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return len(self.feature_names) if self.kind == "categorical" else 1

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.impute is not None:
            d["impute"] = _jsonable(self.impute)
        if self.kind == "categorical":
            d["categories"] = [_jsonable(c) for c in self.categories]
            d["handle_unknown"] = self.handle_unknown
            d["drop"] = _jsonable(self.drop)
            d["infrequent"] = [_jsonable(c) for c in self.infrequent]
            d["feature_names"] = list(self.feature_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Column:
        kind = d.get("kind", "numeric")
        if kind not in ("numeric", "categorical"):
            raise ModelError(f"unknown column kind {kind!r} for column {d.get('name')!r}")
        if kind == "numeric":
            return cls(name=str(d["name"]), kind=kind, impute=d.get("impute"))
        handle = d.get("handle_unknown", "error")
        if handle not in HANDLE_UNKNOWN:
            raise ModelError(f"handle_unknown must be one of {HANDLE_UNKNOWN}, got {handle!r}")
        return cls(
            name=str(d["name"]),
            kind=kind,
            impute=d.get("impute"),
            categories=tuple(d["categories"]),
            handle_unknown=handle,
            drop=d.get("drop"),
            infrequent=tuple(d.get("infrequent", ())),
            feature_names=tuple(d["feature_names"]),
        )


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass(frozen=True)
class RowNorm:
    """Scale a row whose L2 norm exceeds ``max_norm`` onto it, measured in the space the DP
    estimator saw (model features mapped by ``x * scale + offset``), as its fit did."""

    max_norm: float
    scale: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float64))
        object.__setattr__(self, "offset", np.asarray(self.offset, dtype=np.float64))
        if not (self.max_norm > 0 and np.all(self.scale != 0)):
            raise ModelError("row_norm needs a positive max_norm and non-zero scales")

    def apply(self, Z: np.ndarray) -> np.ndarray:
        E = Z * self.scale + self.offset
        norms = np.linalg.norm(E, axis=1)
        over = norms > self.max_norm
        if not np.any(over):
            return Z
        out = Z.copy()
        out[over] = (E[over] * (self.max_norm / norms[over])[:, None] - self.offset) / self.scale
        return out

    def origin(self) -> np.ndarray:
        """The model-feature point that maps to the estimator's origin."""
        return -self.offset / self.scale

    def to_dict(self) -> dict:
        return {
            "max_norm": self.max_norm,
            "scale": self.scale.tolist(),
            "offset": self.offset.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RowNorm:
        return cls(float(d["max_norm"]), np.asarray(d["scale"]), np.asarray(d["offset"]))


@dataclass(frozen=True)
class Preprocessing:
    """Raw input columns and, in order, the columns whose features form the model features.

    ``inputs`` lists the raw columns in the order an array must provide them (a DataFrame is
    matched by name and needs only the columns used); each ``Column`` names the input it reads.
    """

    columns: tuple[Column, ...] = field(default_factory=tuple)
    inputs: tuple[str, ...] = ()
    row_norm: RowNorm | None = None

    def __post_init__(self) -> None:
        inputs = tuple(self.inputs) or tuple(dict.fromkeys(c.name for c in self.columns))
        object.__setattr__(self, "inputs", inputs)
        unknown = {c.name for c in self.columns} - set(inputs)
        if unknown:
            raise ModelError(f"preprocessing reads unknown input column(s): {sorted(unknown)}")
        if len(set(inputs)) != len(inputs):
            raise ModelError("input column names must be distinct")

    @classmethod
    def numeric(cls, names: Sequence[str]) -> Preprocessing:
        return cls(tuple(Column(name=str(n)) for n in names))

    @property
    def input_names(self) -> list[str]:
        """Raw columns a DataFrame must contain (the ones used)."""
        used = {c.name for c in self.columns}
        return [n for n in self.inputs if n in used]

    @property
    def feature_names(self) -> list[str]:
        return list(self._feature_names)

    @functools.cached_property
    def _feature_names(self) -> tuple[str, ...]:
        out: list[str] = []
        for c in self.columns:
            out.extend(c.feature_names if c.kind == "categorical" else [c.name])
        return tuple(out)

    @functools.cached_property
    def _numeric(self) -> tuple[list[Column], list[str], np.ndarray, bool]:
        """The numeric columns, their names, their positions among the raw inputs and whether
        those are all the inputs in order (computed once: at d = 1000 rebuilding them on every
        call took longer than encrypting)."""
        cols = [c for c in self.columns if c.kind == "numeric"]
        index = {name: i for i, name in enumerate(self.inputs)}
        positions = np.array([index[c.name] for c in cols], dtype=np.intp)
        in_order = np.array_equal(positions, np.arange(len(self.inputs)))
        return cols, [c.name for c in cols], positions, in_order

    @property
    def n_features(self) -> int:
        return sum(c.n_features for c in self.columns)

    def to_dict(self) -> dict:
        d = {"inputs": list(self.inputs), "columns": [c.to_dict() for c in self.columns]}
        if self.row_norm is not None:
            d["row_norm"] = self.row_norm.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        row_norm = d.get("row_norm")
        return cls(
            tuple(Column.from_dict(c) for c in d.get("columns", [])),
            tuple(str(x) for x in d.get("inputs", ())),
            RowNorm.from_dict(row_norm) if row_norm else None,
        )

    def model_features(self, X: Any, bounds: Bounds) -> np.ndarray:
        """Raw inputs -> model features, checked or clipped against the bounds, row-norm clipped:
        exactly what the model multiplies (plaintext reference and client alike)."""
        Z = bounds.apply(self.transform(X), self._feature_names)
        return self.row_norm.apply(Z) if self.row_norm is not None else Z

    # ------------------------------------------------------------------ transform
    def transform(self, X: Any) -> np.ndarray:
        """Raw inputs (DataFrame by column name, or array-like by position) -> float64 (n, d)."""
        numeric = self._numeric[0]
        source = self._source(X)
        num = self._numeric_block(source)
        if len(numeric) == len(self.columns):
            return num
        n = num.shape[0] if numeric else len(self._column(source, self.columns[0].name))
        out = np.empty((n, self.n_features), dtype=np.float64)
        j = k = 0
        for col in self.columns:
            if col.kind == "numeric":
                out[:, j] = num[:, k]
                j += 1
                k += 1
            else:
                block = self._onehot(col, self._column(source, col.name))
                out[:, j : j + block.shape[1]] = block
                j += block.shape[1]
        return out

    def _source(self, X: Any):
        """A DataFrame (checked for the needed columns) or a 2-D array (checked for width)."""
        if _is_dataframe(X):
            missing = [c for c in self.input_names if c not in X.columns]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise InputError(
                    f"input is missing {len(missing)} column(s) the model needs: {shown}{more}"
                )
            return X
        names = list(self.inputs)
        try:
            arr = np.asarray(X)
        except Exception as exc:  # ragged lists and similar
            raise InputError(f"cannot read input as a 2-D array: {exc}") from exc
        if arr.ndim == 1 and len(names) == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise InputError(
                f"expected a 2-D array of shape (n_samples, {len(names)}), got {arr.ndim}-D "
                f"shape {arr.shape}; reshape a single sample with X.reshape(1, -1)"
            )
        if arr.shape[1] != len(names):
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
            raise InputError(
                f"X has {arr.shape[1]} features, but the model expects {len(names)} ({shown})"
            )
        return arr

    def _column(self, source, name: str) -> np.ndarray:
        if _is_dataframe(source):
            return source[name].to_numpy()
        return source[:, self.inputs.index(name)]

    def _numeric_block(self, source) -> np.ndarray:
        """All numeric columns at once as float64 (n, len(cols)), imputed or refused."""
        cols, names, positions, in_order = self._numeric
        try:
            if _is_dataframe(source):
                block = source[names].to_numpy(dtype=np.float64) if names else None
            else:
                block = (source if in_order else source[:, positions]).astype(np.float64)
        except (TypeError, ValueError):
            for col in cols:  # find the offending column for the message
                try:
                    np.asarray(self._column(source, col.name), dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise InputError(f"column {col.name!r} must be numeric: {exc}") from exc
            raise
        if block is None:
            rows = len(source) if _is_dataframe(source) else source.shape[0]
            return np.empty((rows, 0))
        bad = ~np.isfinite(block)
        if bad.any():
            block = block.copy()
            for k in np.flatnonzero(bad.any(axis=0)):
                col, v = cols[k], block[:, k]
                if col.impute is not None and not np.isinf(v).any():
                    v[~np.isfinite(v)] = float(col.impute)
                    continue
                rows = np.flatnonzero(~np.isfinite(v))
                kind = "infinite" if np.isinf(v[rows[0]]) else "missing (NaN)"
                hint = "" if col.impute is not None else "; this model has no imputer for it"
                raise InputError.naming_rows(
                    _escaped(f"column {col.name!r} has {rows.size} {kind} value(s), first at ")
                    + "{0}"
                    + _escaped(hint),
                    rows[0],
                )
        return block

    @staticmethod
    def _onehot(col: Column, values: np.ndarray) -> np.ndarray:
        """One-hot indicators exactly as scikit-learn's OneHotEncoder (vectorized)."""
        import pandas as pd

        vals = pd.Series(np.asarray(values, dtype=object))
        missing = vals.isna().to_numpy()
        if col.impute is not None and missing.any():
            vals = vals.where(~missing, col.impute)
            missing = vals.isna().to_numpy()
        cats = list(col.categories)
        nan_index = next((i for i, c in enumerate(cats) if _is_missing(c)), None)
        real = [c for c in cats if not _is_missing(c)]
        codes_real = pd.Index(real, dtype=object).get_indexer(vals.where(~missing)).astype(np.int64)
        index_map = np.array([cats.index(c) for c in real], dtype=np.int64)
        codes = np.where(codes_real >= 0, index_map[np.maximum(codes_real, 0)], -1)
        if nan_index is not None:
            codes = np.where(missing, nan_index, codes)
        infrequent = {i for i, c in enumerate(cats) if any(_same(c, x) for x in col.infrequent)}
        kept = [i for i in range(len(cats)) if i not in infrequent]
        if col.drop is not None:
            kept = [i for i in kept if not _same(cats[i], col.drop)]
        has_infrequent = bool(infrequent)
        width = len(kept) + (1 if has_infrequent else 0)
        if width != len(col.feature_names):
            raise ModelError(
                f"column {col.name!r}: {width} one-hot features expected, artifact lists "
                f"{len(col.feature_names)}"
            )
        position = np.full(len(cats) + 1, -1, dtype=np.int64)  # last slot: unknown (-1)
        position[kept] = np.arange(len(kept))
        if has_infrequent:
            position[list(infrequent)] = width - 1
        unknown = codes < 0
        if unknown.any():
            if col.handle_unknown == "error":
                row = int(np.flatnonzero(unknown)[0])
                shown = ", ".join(repr(c) for c in cats[:8]) + (", …" if len(cats) > 8 else "")
                raise InputError.naming_rows(
                    _escaped(
                        f"column {col.name!r} has {int(unknown.sum())} unknown categor(y/ies), "
                        f"e.g. {vals.iloc[row]!r} at "
                    )
                    + "{0}"
                    + _escaped(f" (known: {shown})"),
                    row,
                )
            if col.handle_unknown == "infrequent_if_exist" and has_infrequent:
                position[-1] = width - 1
        target = position[np.where(unknown, len(cats), codes)]
        out = np.zeros((len(vals), width), dtype=np.float64)
        hit = target >= 0
        out[np.flatnonzero(hit), target[hit]] = 1.0
        return out


def _same(a: Any, b: Any) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    return bool(a == b)


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(isinstance(v, float | np.floating) and np.isnan(v))
    except TypeError:
        return False


@dataclass(frozen=True)
class Bounds:
    """Declared per-feature bounds of the model features, and what to do outside them."""

    lower: np.ndarray
    upper: np.ndarray
    out_of_bounds: str = "error"
    # the range the encoder must cover, when it is wider than the clip box (row-norm clipping
    # toward an origin outside the box); defaults to [lower, upper]
    encode_lower: np.ndarray | None = None
    encode_upper: np.ndarray | None = None

    def __post_init__(self) -> None:
        lo = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        elo = lo if self.encode_lower is None else np.asarray(self.encode_lower, float).reshape(-1)
        ehi = hi if self.encode_upper is None else np.asarray(self.encode_upper, float).reshape(-1)
        if elo.shape != lo.shape or ehi.shape != hi.shape or np.any(elo > lo) or np.any(ehi < hi):
            raise ModelError("the encoding range must contain the bounds")
        object.__setattr__(self, "encode_lower", elo)
        object.__setattr__(self, "encode_upper", ehi)
        if lo.shape != hi.shape:
            raise ModelError(f"bounds have {lo.size} lower and {hi.size} upper values")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ModelError("bounds must be finite numbers")
        if np.any(lo > hi):
            j = int(np.flatnonzero(lo > hi)[0])
            raise ModelError(f"lower bound {lo[j]} is above upper bound {hi[j]} for feature {j}")
        if self.out_of_bounds not in OUT_OF_BOUNDS_POLICIES:
            raise ModelError(
                f"out_of_bounds must be one of {OUT_OF_BOUNDS_POLICIES}, got {self.out_of_bounds!r}"
            )
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def center(self) -> np.ndarray:
        return (self.encode_lower + self.encode_upper) / 2.0

    @property
    def half_width(self) -> np.ndarray:
        """Half-widths; a zero-width feature gets 1 so the normalized value stays 0."""
        hw = (self.encode_upper - self.encode_lower) / 2.0
        return np.where(hw > 0, hw, 1.0)

    def apply(self, Z: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        """Check or clip model features against the bounds (per the policy)."""
        below = self.lower > Z
        above = self.upper < Z
        if not (np.any(below) or np.any(above)):
            return Z
        if self.out_of_bounds == "clip":
            return np.clip(Z, self.lower, self.upper)
        bad_cols = np.flatnonzero(np.any(below | above, axis=0))
        parts, first_rows = [], []
        for i, j in enumerate(bad_cols[:5]):
            col = Z[:, j]
            rows = np.flatnonzero(below[:, j] | above[:, j])
            name = feature_names[j] if j < len(feature_names) else f"x{j}"
            parts.append(
                _escaped(
                    f"{name!r}: {rows.size} value(s) outside "
                    f"[{self.lower[j]:.6g}, {self.upper[j]:.6g}] (e.g. {col[rows[0]]:.6g} at "
                )
                + f"{{{i}}})"
            )
            first_rows.append(rows[0])
        more = f"; and {bad_cols.size - 5} more feature(s)" if bad_cols.size > 5 else ""
        raise OutOfBoundsError.naming_rows(
            "input outside the model's declared bounds — "
            + "; ".join(parts)
            + more
            + ". Encrypted scoring is exact only inside the bounds the model was exported with; "
            "re-export with wider bounds=, or with out_of_bounds='clip' to clip instead "
            "(`heml train --out-of-bounds clip`).",
            *first_rows,
        )

    def normalize(self, Z: np.ndarray) -> np.ndarray:
        """Map features inside the bounds to [-1, 1] (what the client encrypts)."""
        return np.clip((Z - self.center) / self.half_width, -1.0, 1.0)

    def to_dict(self) -> dict:
        d = {
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "out_of_bounds": self.out_of_bounds,
        }
        if np.any(self.encode_lower != self.lower) or np.any(self.encode_upper != self.upper):
            d["encode_lower"] = self.encode_lower.tolist()
            d["encode_upper"] = self.encode_upper.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Bounds:
        return cls(
            np.asarray(d["lower"], dtype=np.float64),
            np.asarray(d["upper"], dtype=np.float64),
            d.get("out_of_bounds", "error"),
            d.get("encode_lower"),
            d.get("encode_upper"),
        )


def _escaped(text: str) -> str:
    """``text`` made literal inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")
