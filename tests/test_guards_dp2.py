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
