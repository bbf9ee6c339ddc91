"""DP input checks that the mutation run found untested (issue 18, third round)."""

from __future__ import annotations

import numpy as np

from heml.dp import BudgetAccountant, DPLogisticRegression


def test_a_dp_classifier_takes_text_labels_from_its_declared_set():
    """docs/dp.md, "Public label set": the labels are the declared ``classes``, whatever their
    type; a classifier's y is not converted to numbers (only the regression's is)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 2))
    # object dtype, as a pandas text column gives it (sklearn would convert it to float if asked
    # for a numeric y, and fail)
    y = np.where(X[:, 0] > 0, "yes", "no").astype(object)
    clf = DPLogisticRegression(epsilon=2.0, classes=["no", "yes"], bounds_X=(-1, 1),
                               random_state=0, accountant=BudgetAccountant())  # fmt: skip
    clf.fit(X, y)
    assert clf.classes_.tolist() == ["no", "yes"]
    assert set(clf.predict(X).tolist()) <= {"no", "yes"}


def test_a_fingerprint_sorts_the_values_of_tied_columns_within_each_row():
    """docs (heml/dp/_ledger.py, table_fingerprint): columns holding the same multiset of values
    tie, and within a row their values are sorted, so the column order cannot matter. Here
    every column ties (the tie group is the first in the canonical order)."""
    import hashlib

    import pandas as pd

    from heml.dp import _ledger

    df = pd.DataFrame({"p": [1.0, 2.0, 3.0], "q": [2.0, 1.0, 3.0]})
    rows = sorted(tuple(sorted(r)) for r in zip(df["p"], df["q"], strict=True))
    h = hashlib.sha256(b"heml-table-v1:3x2:")
    h.update(np.array(rows, dtype=np.float64).view(np.uint64).astype("<u8").tobytes())
    assert _ledger.table_fingerprint(df) == "table:" + h.hexdigest()
    three = df.assign(r=[3.0, 1.0, 2.0])  # all three tie
    rows = sorted(tuple(sorted(r)) for r in three.itertuples(index=False))
    h = hashlib.sha256(b"heml-table-v1:3x3:")
    h.update(np.array(rows, dtype=np.float64).view(np.uint64).astype("<u8").tobytes())
    assert _ledger.table_fingerprint(three) == "table:" + h.hexdigest()
