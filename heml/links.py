"""Link functions: how a model's scores W·x + b become predictions, exactly as scikit-learn does.

The server only ever computes scores; the client applies the link after decryption, so no
polynomial approximation is involved.
"""

from __future__ import annotations

import numpy as np

IDENTITY = "identity"
LOGISTIC = "logistic"
SOFTMAX = "softmax"
OVR_LOGISTIC = "ovr_logistic"
MODIFIED_HUBER = "modified_huber"
NO_PROBABILITY = "none"
EXP = "exp"

REGRESSION_LINKS = (IDENTITY, EXP)
CLASSIFIER_LINKS = (LOGISTIC, SOFTMAX, OVR_LOGISTIC, MODIFIED_HUBER, NO_PROBABILITY)
ALL_LINKS = REGRESSION_LINKS + CLASSIFIER_LINKS


def _expit(x: np.ndarray) -> np.ndarray:
    # numerically stable logistic function, float64
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _normalize_rows(prob: np.ndarray) -> np.ndarray:
    """Divide rows by their sums; rows summing to zero become uniform (scikit-learn's rule)."""
    total = prob.sum(axis=1)
    zero = total == 0
    if np.any(zero):
        prob[zero, :] = 1.0
        total[zero] = prob.shape[1]
    return prob / total[:, None]


def regression_output(link: str, scores: np.ndarray) -> np.ndarray:
    """Regression predictions from scores of shape (n, k)."""
    if link == IDENTITY:
        return scores
    if link == EXP:
        return np.exp(scores)
    raise ValueError(f"link {link!r} is not a regression link")


def probabilities(link: str, scores: np.ndarray) -> np.ndarray:
    """Class probabilities of shape (n, n_classes) from scores of shape (n, k).

    Binary models have k = 1 and return (n, 2), as scikit-learn does.
    """
    binary = scores.shape[1] == 1
    if link == NO_PROBABILITY:
        raise AttributeError(
            "this model has no probability estimates (it was trained with a margin loss such as "
            "hinge); use predict or decision_function, or train with loss='log_loss'"
        )
    if link in (LOGISTIC, OVR_LOGISTIC):
        p = _expit(scores)
        return np.hstack([1.0 - p, p]) if binary else _normalize_rows(p)
    if link == SOFTMAX:
        if binary:
            raise ValueError("the softmax link needs at least two scores per sample")
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if link == MODIFIED_HUBER:
        p = (np.clip(scores, -1.0, 1.0) + 1.0) / 2.0
        return np.hstack([1.0 - p, p]) if binary else _normalize_rows(p)
    raise ValueError(f"link {link!r} is not a classification link")


def class_indices(scores: np.ndarray) -> np.ndarray:
    """Index of the predicted class for each row of scores (n, k): sign for k = 1, argmax else."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.intp)
    return np.argmax(scores, axis=1)


# ---------------------------------------------------------------------- scikit-learn shapes
def finish_decision_function(scores: np.ndarray, task: str, link: str, output_ndim: int):
    """(n, k) scores -> decision_function's shape: (n,) for one score, else (n, k)."""
    if task == "regression" and link != IDENTITY:
        raise AttributeError("decision_function is for classifiers; use predict")
    return scores[:, 0] if scores.shape[1] == 1 and output_ndim == 1 else scores


def finish_predict(scores: np.ndarray, task: str, link: str, classes, output_ndim: int):
    """(n, k) scores -> predictions with scikit-learn's shape and dtype."""
    if task == "regression":
        y = regression_output(link, scores)
        return y[:, 0] if output_ndim == 1 else y
    return np.asarray(classes)[class_indices(scores)]


def finish_predict_proba(scores: np.ndarray, task: str, link: str) -> np.ndarray:
    if task == "regression":
        raise AttributeError("predict_proba is for classifiers")
    return probabilities(link, scores)
