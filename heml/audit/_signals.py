"""The per-record statistic every attack reads from a fitted model (higher = fits better).

What a heml client sees after decryption is the model's score ``W·x + b``, so the statistics are
functions of that score and the record's label:

* classifiers: the **margin**, the logit of the true class. Binary: ``±(w·x + b)``, the sign
  chosen so that it is positive when the true class wins. Multiclass: ``z_y − logsumexp(z_¬y)``
  over the decision scores, which is ``log(p_y / (1 − p_y))`` for a softmax model. This is LiRA's
  logit-scaled confidence (Carlini et al. 2022), computed without clipping ``log p``.
  Estimators without ``decision_function`` fall back to ``log p_y − log(1 − p_y)`` from
  ``predict_proba`` (clipped to float precision).
* regressors: the **negative absolute residual** ``−|y − f(x)|`` (the squared-error loss, made
  monotone and sign-flipped; multi-output: minus the Euclidean norm of the residual).

Training on a record raises its statistic, so "higher = more likely a member" holds for the raw
statistic, which is exactly the LOSS/margin threshold attack.

A label the model does not know (a shadow model trained without any record of a rare class,
when the class list is read from the data) gets ``UNSEEN_LABEL_MARGIN``: the model gives that
label probability 0, the lowest statistic there is. It does not raise: a model that knows a
label only when a record carrying it was trained on is exactly what the audit must measure.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.base import is_classifier

_PROBA_EPS = 1e-15
#: the statistic of a record whose label is not among the model's classes (probability 0);
#: finite, below any margin a float64 probability can express (|logit| ≤ 745)
UNSEEN_LABEL_MARGIN = -1000.0


def class_indices(classes, y) -> np.ndarray:
    """Position of every label of ``y`` in ``classes``; −1 for labels the model never saw."""
    classes = np.asarray(classes)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    return np.fromiter((lookup.get(v, -1) for v in np.asarray(y).tolist()), dtype=np.intp)


def membership_signal(estimator, X, y) -> np.ndarray:
    """Per-record statistic of a fitted estimator: margin (classifiers) or −|residual|.

    Parameters
    ----------
    estimator : fitted scikit-learn estimator or Pipeline
    X : array-like of shape (n, d)
    y : array-like of shape (n,) (or (n, k) for multi-output regression)

    Returns
    -------
    ndarray of shape (n,), higher = the model fits the record better.
    """
    if is_classifier(estimator):
        classes = np.asarray(estimator.classes_)
        idx = class_indices(classes, y)
        unseen = idx < 0
        if unseen.any():
            out = np.full(idx.size, UNSEEN_LABEL_MARGIN)
            if not unseen.all():
                out[~unseen] = membership_signal(
                    estimator, _rows(X, ~unseen), np.asarray(y)[~unseen]
                )
            return out
        rows = np.arange(idx.size)
        if hasattr(estimator, "decision_function"):
            z = np.asarray(estimator.decision_function(X), dtype=np.float64)
            if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
                z = z.reshape(-1)
                if classes.size != 2:
                    raise ValueError("a 1-D decision_function needs a binary classifier")
                return np.where(idx == 1, z, -z)
            if z.shape != (idx.size, classes.size):
                raise ValueError(f"decision_function returned shape {z.shape}")
            true = z[rows, idx]
            others = z.copy()
            others[rows, idx] = -np.inf
            return true - logsumexp(others, axis=1)
        p = np.asarray(estimator.predict_proba(X), dtype=np.float64)[rows, idx]
        p = np.clip(p, _PROBA_EPS, 1.0 - _PROBA_EPS)
        return np.log(p) - np.log1p(-p)
    pred = np.asarray(estimator.predict(X), dtype=np.float64)
    resid = np.asarray(y, dtype=np.float64) - pred.reshape(np.shape(y))
    if resid.ndim == 1:
        return -np.abs(resid)
    return -np.linalg.norm(resid.reshape(resid.shape[0], -1), axis=1)


def _rows(X, mask: np.ndarray):
    """The rows of X (array or DataFrame) where ``mask`` holds."""
    return X[mask] if not hasattr(X, "iloc") else X.iloc[np.flatnonzero(mask)]
