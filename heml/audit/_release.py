"""Release canaries: does the *shape* of a released model reveal one record?

The margin canary (``make_canary``) measures what a record does to the model's scores. Two
leaks slip past it, because they are read off the released model rather than its scores:

* **label set** (``"label_set"``): a model whose class list comes from the training labels
  (``np.unique(y)``) knows a label only if some record carries it. The canary pair replaces
  one training row's label by a *fresh* label that no other record has ("in" world) or leaves
  the row alone ("out" world). An estimator with a declared label set (a ``classes``
  parameter) refuses undeclared labels, so there the canary label is the rarest declared one
  (one that no record carries, if any): still one record that ``np.unique(y)`` would reveal.
  The statistic reads the class list and what it drives:
  ``[fresh label ∈ classes_] + len(classes_) + rows of coef_``.
* **extreme record** (``"extreme_record"``): a model whose exported feature or target bounds
  are the data's min/max moves them to include an outlier. The canary pair replaces one row by
  a record ten ranges beyond the data's bounding box in every feature (and, for regression, a
  target ten ranges above the observed maximum), or leaves the row alone. The statistic is the
  largest magnitude among the fitted range attributes ``bounds_X_``, ``bounds_y_`` and
  ``data_norm_`` (what ``heml.export`` writes into the model file for clients to clip with).

Both statistics are functions of the released model, so a DP training procedure bounds how
well they separate the two worlds exactly as it bounds the margin: the same
:func:`epsilon_lower_bound` applies. An estimator that exports neither attribute gives a
constant statistic (nothing to read, bound 0); a fit that raises is itself an observable
outcome and gets its own value, so an estimator that fails only when the canary is present
is flagged too.
"""

from __future__ import annotations

import numpy as np

from ._dp_audit import Canary

#: the release canaries, in report order, with what each statistic reads
RELEASE_CANARIES = {
    "label_set": "[fresh label in classes_] + len(classes_) + rows of coef_",
    "extreme_record": "largest |value| among bounds_X_, bounds_y_ and data_norm_",
}
#: how far beyond the data's range the extreme record lies, in ranges
EXTREME_RANGES = 10.0
#: the statistic of a run whose fit raised (an observable outcome of its own)
FIT_ERROR_STATISTIC = 1e100
#: the statistic when the released model has no attribute the canary reads
ABSENT_STATISTIC = -1.0


def fresh_label(y):
    """A label no record of ``y`` carries, of the labels' own type; None for booleans."""
    y = np.asarray(y)
    if y.dtype.kind == "b":
        return None
    if y.dtype.kind in "iu":
        return int(y.max()) + 1
    if y.dtype.kind == "f":
        return float(np.nanmax(y)) + 1.0
    seen = {str(v) for v in y.tolist()}
    label = "heml-audit-canary"
    while label in seen:
        label += "+"
    return label


def declared_label(y, classes):
    """The canary's label when the estimator declares its label set: a declared label that
    no record carries if there is one, else the rarest declared label.

    A record whose label is not declared lies outside the data universe such an estimator's
    guarantee is stated over (it refuses to fit), so the canary stays inside that universe:
    one more record of a rare declared class is exactly what leaked through ``np.unique(y)``.
    """
    labels = list(classes)
    y = np.asarray(y).tolist()
    counts = {i: sum(1 for v in y if v == c) for i, c in enumerate(labels)}
    rarest = min(counts, key=lambda i: (counts[i], i))
    return labels[rarest]


def label_canary(X, y, *, classes=None, random_state: int | None = 0) -> Canary | None:
    """The label-set canary pair: row j with a fresh label ("in") or as it is ("out").

    With ``classes`` (the estimator's declared label set) the label is a declared one no
    record carries, or the rarest declared one (see ``declared_label``). None when the labels
    are booleans and nothing is declared (no fresh label of that type exists).
    """
    X = np.asarray(X, dtype=np.float64)
    if classes is not None:
        label = declared_label(y, classes)
        kind = "a declared label, the rarest in the data"
    else:
        label = fresh_label(y)
        kind = "a label no other record carries"
    if label is None:
        return None
    rng = np.random.default_rng(random_state)
    ys = np.asarray(y).tolist()
    others = [i for i, v in enumerate(ys) if v != label] or list(range(X.shape[0]))
    j = int(others[int(rng.integers(len(others)))])
    return Canary(
        x=X[j].copy(),
        y=label,
        replaced_index=j,
        description=(
            f"training row {j} relabelled {label!r}, {kind}; in the other world the row is "
            "unchanged"
        ),
        y_out=None,
    )


def extreme_canary(X, y, *, classifier: bool, random_state: int | None = 0) -> Canary:
    """The extreme-record canary pair: row j replaced by a far outlier ("in") or as it is."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    j = int(np.random.default_rng(random_state).integers(X.shape[0]))
    lo, hi = X.min(axis=0), X.max(axis=0)
    width = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    x = hi + EXTREME_RANGES * width
    if classifier:
        label, what = y[j], f"its own label {_plain(y[j])!r}"
    else:
        y_lo, y_hi = float(np.min(y)), float(np.max(y))
        y_width = y_hi - y_lo if y_hi > y_lo else max(abs(y_hi), 1.0)
        label = y_hi + EXTREME_RANGES * y_width
        what = f"target {label:.6g} ({EXTREME_RANGES:g} ranges above the largest)"
    return Canary(
        x=x,
        y=label,
        replaced_index=j,
        description=(
            f"training row {j} replaced by a record {EXTREME_RANGES:g} ranges beyond the data's "
            f"bounding box in every feature, with {what}; in the other world the row is unchanged"
        ),
        y_out=None,
    )


def release_statistic(name: str, estimator, canary: Canary) -> float:
    """The release canary ``name``'s statistic of a fitted estimator (higher = "in" world)."""
    final = _final_step(estimator)
    if name == "label_set":
        classes = getattr(final, "classes_", None)
        if classes is None:
            return ABSENT_STATISTIC
        labels = np.asarray(classes).tolist()
        rows = np.shape(getattr(final, "coef_", np.empty((0, 0))))
        return float(canary.y in labels) + len(labels) + (rows[0] if len(rows) == 2 else 1)
    if name == "extreme_record":
        values = []
        for attr in ("bounds_X_", "bounds_y_", "data_norm_"):
            v = getattr(final, attr, None)
            if v is None:
                continue
            flat = np.abs(
                np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in _parts(v)])
            )
            values.extend(flat[np.isfinite(flat)].tolist())
        return max(values) if values else ABSENT_STATISTIC
    raise ValueError(f"unknown release canary {name!r}; known: {', '.join(RELEASE_CANARIES)}")


def _parts(value):
    return value if isinstance(value, list | tuple) else [value]


def _final_step(estimator):
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
