"""Reference mechanisms with an exactly known (ε, δ), for checking the auditor itself.

Not for protecting data: the noise comes from numpy's generator, not a vetted sampler (see
heml.dp for that). They exist so that an audit can be run where the true ε is known.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """Exact δ(ε) of the Gaussian mechanism N(f(D), σ²) with L2 sensitivity Δ.

    δ(ε) = Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ) (Balle & Wang 2018, Theorem 8).
    """
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return float(ndtr(a - b) - math.exp(epsilon) * ndtr(-a - b))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ for which the Gaussian mechanism is (ε, δ)-DP (analytic Gaussian mechanism).

    Parameters
    ----------
    epsilon : float, > 0
    delta : float, in (0, 1)
    sensitivity : float, default=1
        L2 sensitivity Δ of the released function.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")

    def gap(log_sigma: float) -> float:
        return gaussian_delta(epsilon, math.exp(log_sigma), sensitivity) - delta

    lo, hi = math.log(sensitivity) - 10.0, math.log(sensitivity) + 10.0
    while gap(hi) > 0:
        hi += 10.0
    while gap(lo) < 0:
        lo -= 10.0
    return math.exp(brentq(gap, lo, hi, xtol=1e-14, rtol=1e-14))


class NoisySumClassifier(ClassifierMixin, BaseEstimator):
    """Binary linear classifier w = (Σ yᵢ·clip(xᵢ) + noise) / n with an exactly known ε.

    Replacing one record moves the sum by at most 2·``norm`` (L2 for Gaussian noise, L1 for
    Laplace noise), so Gaussian noise of the analytic-Gaussian σ gives exactly (ε, δ)-DP and
    Laplace noise of scale 2·norm/ε gives ε-DP (δ = 0), under the replace-one relation with n
    public. A canary that flips the label of a record at x with ‖x‖ = norm (1-sparse for Laplace)
    attains the sensitivity, so the audit faces the worst case of the mechanism.

    Parameters
    ----------
    epsilon : float, default=1.0
        ``inf`` adds no noise.
    delta : float, default=1e-5
        Used by Gaussian noise only.
    norm : float, default=1.0
        Rows are scaled down to this norm (L2, or L1 for Laplace) in fit and decision_function.
    noise : {"gaussian", "laplace"}, default="gaussian"
    random_state : int, optional
        Seeds the noise (numpy; for audits, not for protecting data).
    classes : sequence of two labels, optional
        The public label set; a record with another label adds nothing to the sum. ``None``
        reads the two classes from ``y`` (``np.unique``): the class list then depends on the
        data, which the audit's label-set canary detects.
    """

    def __init__(
        self, epsilon=1.0, delta=1e-5, norm=1.0, noise="gaussian", random_state=None, classes=None
    ):
        self.epsilon = epsilon
        self.delta = delta
        self.norm = norm
        self.noise = noise
        self.random_state = random_state
        self.classes = classes

    def _clip(self, X):
        X = np.asarray(X, dtype=np.float64)
        order = 1 if self.noise == "laplace" else 2
        r = np.linalg.norm(X, ord=order, axis=1, keepdims=True)
        return X * np.minimum(1.0, self.norm / np.maximum(r, 1e-300))

    def fit(self, X, y):
        if self.noise not in ("gaussian", "laplace"):
            raise ValueError(f"noise must be 'gaussian' or 'laplace', got {self.noise!r}")
        X = np.asarray(X, dtype=np.float64)
        self.classes_ = np.unique(y) if self.classes is None else np.asarray(self.classes)
        if self.classes_.size != 2:
            raise ValueError(f"NoisySumClassifier is binary; got {self.classes_.size} classes")
        y = np.asarray(y)
        sign = np.where(y == self.classes_[1], 1.0, np.where(y == self.classes_[0], -1.0, 0.0))
        total = sign @ self._clip(X)
        rng = np.random.default_rng(self.random_state)
        sens = 2.0 * self.norm
        eps = float(self.epsilon)
        if math.isinf(eps):
            noise, delta = np.zeros_like(total), 0.0
        elif self.noise == "gaussian":
            noise = rng.normal(0.0, analytic_gaussian_sigma(eps, self.delta, sens), total.shape)
            delta = float(self.delta)
        else:
            noise, delta = rng.laplace(0.0, sens / eps, total.shape), 0.0
        self.coef_ = ((total + noise) / X.shape[0]).reshape(1, -1)
        self.intercept_ = np.zeros(1)
        self.n_features_in_ = X.shape[1]
        self.dp_guarantee_ = {
            "private": math.isfinite(eps),
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": delta,
            "mechanism": f"{self.noise} noisy sum (reference mechanism for audits)",
            "neighbouring": "replace-one",
        }
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        return self._clip(X) @ self.coef_[0] + self.intercept_[0]

    def predict(self, X):
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
