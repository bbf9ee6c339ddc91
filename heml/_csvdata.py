"""Reading a training table for `heml train` and `heml audit`: one set of checks for both.

Everything here fails with ``InvalidInput`` (exit code 2) before any model is fitted, so a bad
file never costs privacy budget.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np

IDENTIFIER_NAMES = re.compile(
    r"(^|_)(id|uuid|guid|name|first_?name|last_?name|full_?name|email|e_?mail|phone|ssn|"
    r"address|passport|account)($|_)",
    re.IGNORECASE,
)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# a column of at most this many distinct integer values is read as class labels (task=auto)
MAX_AUTO_CLASSES = 20


class InvalidInput(Exception):
    """Bad arguments or data (exit 2), reported in one line."""


def parse_pair(text: str | None, flag: str) -> tuple[float, float] | None:
    """ "LO,HI" -> (lo, hi), finite with lo < hi; None stays None."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInput(f"{flag} must be LO,HI (two numbers), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidInput(f"{flag} must be finite with LO < HI, got {text!r}")
    return lo, hi


def _is_bounds_file(text: str) -> bool:
    return text.lower().endswith(".json")


def check_bounds_arg(text: str | None, flag: str = "--bounds") -> None:
    """Fail on a malformed LO,HI pair before the data are read (a bounds file is read by
    ``parse_feature_bounds`` once the feature columns are known)."""
    if text is not None and not _is_bounds_file(text):
        parse_pair(text, flag)


def parse_feature_bounds(text: str | None, columns, flag: str = "--bounds"):
    """``--bounds``: "LO,HI" for every feature, or FILE.json mapping each feature column to
    [LO, HI] (heterogeneous raw features need their own ranges). Returns None, a (lo, hi) pair
    of floats, or a pair of per-column arrays in ``columns`` order."""
    if text is None:
        return None
    if not _is_bounds_file(text):
        return parse_pair(text, flag)
    try:
        spec = json.loads(Path(text).read_text())
    except OSError as exc:
        raise InvalidInput(f"{flag}: cannot read {text!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{flag}: {text!r} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidInput(f'{flag}: {text!r} must hold an object {{"column": [LO, HI], ...}}')
    columns = [str(c) for c in columns]
    missing = [c for c in columns if c not in spec]
    unknown = [k for k in spec if k not in columns]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"no bounds for {len(missing)} feature column(s): {missing[:10]}")
        if unknown:
            parts.append(
                f"bounds for {len(unknown)} column(s) that are not features: {unknown[:10]}"
            )
        raise InvalidInput(f"{flag}: {text!r} has " + "; ".join(parts))
    lo, hi = np.empty(len(columns)), np.empty(len(columns))
    for j, c in enumerate(columns):
        pair = spec[c]
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        if not ok or not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[0] < pair[1]):
            raise InvalidInput(f"{flag}: bounds of {c!r} must be [LO, HI], finite, LO < HI")
        lo[j], hi[j] = pair
    return lo, hi


def checked_task(y, target: str, task: str = "auto") -> str:
    """The task for a target column without missing values ("auto" infers it), after the
    checks both commands make: a regression target is numeric and finite, a classification
    target has at least two classes."""
    import pandas as pd

    task = task if task != "auto" else infer_task(y)
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y):
            raise InvalidInput(f"target {target!r} is not numeric; use --task classification")
        if not np.isfinite(y.to_numpy(dtype=np.float64)).all():
            raise InvalidInput(f"target {target!r} has infinite values")
    elif y.nunique() < 2:
        raise InvalidInput(f"target {target!r} has a single class; need at least 2")
    return task


def infer_task(y) -> str:
    """'classification' for non-numeric, boolean or few-integer targets, else 'regression'."""
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    values = y.to_numpy(dtype=np.float64)
    if np.all(values == np.round(values)) and len(np.unique(values)) <= MAX_AUTO_CLASSES:
        return "classification"
    return "regression"


def identifier_warnings(df) -> list[str]:
    """Columns that look like direct identifiers: names, emails, or unique per row."""
    import pandas as pd

    out = []
    n = len(df)
    for col in df.columns:
        s = df[col]
        reasons = []
        if IDENTIFIER_NAMES.search(str(col)):
            reasons.append("its name suggests an identifier")
        if not pd.api.types.is_float_dtype(s) and n >= 10 and s.nunique(dropna=True) == n:
            reasons.append("every row has a distinct value")
        if s.dtype == object:
            sample = s.dropna().astype(str).head(200)
            if len(sample) and sample.map(lambda v: bool(EMAIL.match(v))).mean() > 0.5:
                reasons.append("it holds email addresses")
        if reasons:
            out.append(
                f"column {col!r} looks like a direct identifier ({'; '.join(reasons)}): "
                "drop it with --drop"
            )
    return out


def read_table(source: str | Path | bytes, target: str, drop: str = "", *, name: str | None = None):
    """CSV -> (numeric finite feature DataFrame, target Series), after --drop; checked.

    ``name`` is how messages call the file (default: its path; "the data" for bytes)."""
    import pandas as pd

    if name is None:
        name = "the data" if isinstance(source, bytes) else str(source)
    try:
        df = pd.read_csv(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}") from None
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"{name} is empty: expected a CSV file with a header row") from None
    except Exception as exc:
        raise InvalidInput(f"cannot parse {name} as CSV: {str(exc).strip()}") from None
    if df.shape[0] == 0:
        raise InvalidInput(f"{name} has no data rows (only a header)")
    if target not in df.columns:
        raise InvalidInput(
            f"--target {target!r} is not a column of {name}{_columns_hint(target, df)}"
        )
    dropped = [c for c in (s.strip() for s in (drop or "").split(",")) if c]
    missing = [c for c in dropped if c not in df.columns]
    if missing:
        hint = _columns_hint(missing[0], df)
        raise InvalidInput(f"--drop names unknown column(s) of {name}: {', '.join(missing)}{hint}")
    if target in dropped:
        raise InvalidInput("--drop includes the target column")
    df = df.drop(columns=dropped)
    y = df.pop(target)
    if df.shape[1] == 0:
        raise InvalidInput("no feature columns left after --drop and --target")
    return df, y


def numeric_features(df) -> np.ndarray:
    """Feature columns as float64, refusing non-numeric and non-finite values by name."""
    import pandas as pd

    non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise InvalidInput(
            f"non-numeric feature column(s) {', '.join(map(repr, non_numeric[:5]))}: encode "
            "them as numbers or drop them with --drop"
        )
    X = df.to_numpy(dtype=np.float64)
    bad = [c for c, ok in zip(df.columns, np.isfinite(X).all(axis=0), strict=True) if not ok]
    if bad:
        raise InvalidInput(
            f"column(s) with missing or infinite values: {', '.join(map(repr, bad[:5]))}"
        )
    return X


def _columns_hint(wanted: str, df) -> str:
    """ "; did you mean 'label'? (columns: a, b, label)": the close match first, then the header."""
    import difflib

    columns = [str(c) for c in df.columns]
    close = difflib.get_close_matches(wanted, columns, n=1, cutoff=0.6)
    if not close:
        close = [c for c in columns if c.lower() == wanted.lower()]
    shown = ", ".join(columns[:12]) + (f", … ({len(columns)} in all)" if len(columns) > 12 else "")
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"{guess} (columns: {shown})"
