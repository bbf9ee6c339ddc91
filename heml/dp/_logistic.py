"""DPLogisticRegression: DP gradient descent (softmax; the default) and objective perturbation."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from . import _calibration as cal
from . import _dpgd
from ._base import DPEstimatorMixin, numpy_error_defaults
from ._dpgd import noisy_gradient_descent
from ._noise import NoiseSource, rounding_slack
from ._private_bounds import check_fit_plan, fit_with_estimated_bounds
from ._validation import (
    check_delta_vs_n,
    clip_rows,
    resolve_feature_bounds,
    row_bound,
    validate_data,
)

METHODS = ("auto", "objpert", "dpgd")

# Objective perturbation, fixed a priori (public; chosen on synthetic make_classification data):
OBJPERT_BETA = 0.25  # bound on the logistic loss's second derivative (rows have ‖z‖ ≤ 1)
OBJPERT_LAMBDA_FACTOR = 0.5  # ridge λ = factor · σ · √(d+1): about E‖b‖/2
OBJPERT_MAX_JACOBIAN_SHARE = 0.5  # the Jacobian term never takes more than half of ε
NEWTON_MAX_ITER = 200

# DP gradient descent on the softmax loss (public; chosen on synthetic make_classification data):
DPGD_CLIP = 0.5  # per-example gradient L2 clip C (the unclipped bound is √2)
DPGD_LR = 2.0  # step size 1/L for the average softmax loss on rows with ‖a‖ ≤ 1 (L ≤ 1/2)
DPGD_MAX_STEPS = 200  # T's cap; the rule T = ν²/8 (at least 5) is _dpgd.dpgd_steps
# With T ≥ DPGD_AVERAGE_MIN_STEPS the released model is the mean of the iterates W_t for
# t > T/2 (tail averaging, Polyak-Ruppert; _dpgd.averaging_start): post-processing of the T noisy
# releases, so it costs no privacy. Near convergence it averages out noise the last iterate
# carries (with T = 200: +0.8 points on digits, +0.2 on breast cancer, on top of +1.9 / +0.5
# from T = 200 instead of 100). At smaller T the iterates are still on the way from W = 0,
# where the last one has the best signal-to-noise ratio (measured: averaging at T = 5-60 lost
# 0.5-3 points), so there the last iterate is released. Public: T only.
DPGD_AVERAGE_MIN_STEPS = 100

# Intercept column, as a fraction of the row bound: a = [x, κ] / √(R² + κ²).
INTERCEPT_FRACTION = 0.5


# Approximate minima perturbation (Iyengar et al. 2019): the solver stops at a public gradient
# tolerance γ and a second Gaussian, from a fixed share of (ε, δ), covers the distance to the
# exact minimizer (public; the share is small because γ/λ is tiny at this tolerance).
AMP_EPSILON_SHARE = 0.01
AMP_DELTA_SHARE = 0.01
# γ = factor · (n + λ + σ√(d+1) + 1): about 10^3 times the floating-point error of the gradient
# (whose terms are the n rows, λθ and b, with E‖b‖ = σ√(d+1)), so Newton reaches it; γ/λ is then
# so small that the residual Gaussian is negligible (σ₂ ≈ 1e-7 on breast cancer at ε = 1)
AMP_GAMMA_FACTOR = 1e-11

NO_CLASSES_MESSAGE = (
    "DPLogisticRegression needs the label set at finite epsilon: pass classes=[...] (the public "
    "list of labels; with heml train, --classes). Reading it from y would leak rare labels."
)
UNKNOWN_LABEL_MESSAGE = (
    "y has labels that are not in classes; every label must be one of the declared classes "
    "(the message does not say which label, so that it reveals nothing about the data)"
)
# What the guarantee is about: neighbouring datasets replace one record of this universe by
# another. A record outside it makes fit refuse (before any spend), so the refusal itself is a
# deterministic function of the data that (ε, δ) does not cover; both go into the guarantee.
DATA_UNIVERSE = (
    "records (x, y) with x a vector of n_features_in_ finite numbers (clipped to bounds_X_ and "
    "data_norm_) and y one of classes_"
)
OUTSIDE_UNIVERSE_NOT_COVERED = (
    "whether fit refused: a record outside data_universe (a label not in classes_, a NaN or "
    "infinite feature) makes fit refuse before any spend, so a missing model can reveal that "
    "such a record was present"
)
CONVERGENCE_MESSAGE = (
    "the Newton solver did not reach the public gradient tolerance within {max_iter} steps; no "
    "model is released (the budget stays spent: the data were used)."
)


class ConvergenceError(RuntimeError):
    """The solver did not reach the gradient tolerance that the privacy analysis assumes."""


class DPLogisticRegression(DPEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Logistic regression with (ε, δ)-differential privacy.

    By default (``method="auto"``) every label set uses full-batch DP gradient descent on the
    multinomial (softmax) loss: one model, the whole budget, no one-vs-rest split; its step
    count T and its averaging of the last iterates depend only on n, d, ``classes``, ε and δ
    (public), never on ``y``. ``method="objpert"`` (two classes) uses approximate minima
    perturbation (Iyengar et al. 2019) around Gaussian objective perturbation (Kifer et al.
    2012, replace-one analysis in ``docs/dp.md``): a minimizer of the logistic loss plus a ridge
    and a random linear term, found to a public gradient tolerance, plus a small Gaussian that
    covers the distance to the exact minimizer.

    Parameters
    ----------
    epsilon : float, default=1.0
        Privacy budget ε of this fit, > 0. ``inf`` fits without privacy (the unpenalized
        maximum-likelihood model on the clipped data).
    delta : float, default=1e-5
        δ of this fit, in (0, 1/n).
    classes : sequence of labels, default=None
        The public label set (at least two distinct labels); ``classes_`` is it, sorted. It
        fixes the mechanism and its parameters. Required at finite ε: the labels present in
        ``y`` are private (one rare label would change the model's shape). A row whose label
        is not in ``classes`` is invalid input, like a NaN feature: ``fit`` refuses with a
        fixed message before any budget is spent (the data universe is records whose label is
        declared, and neighbouring datasets replace one such record by another). ``None`` at
        ``epsilon=inf`` reads the labels from ``y``.
    bounds_X : (lower, upper), None, PrivateBounds or "data", default=None
        Public per-feature bounds: scalars or arrays of length n_features. Values are clipped
        to them in ``fit``; ``heml.export`` makes clients clip the same way. ``None`` (with no
        finite ``data_norm``) or ``PrivateBounds(search_range=...)``: bounds, the features'
        centre and (at larger n·ε) their spread are estimated with DP inside (epsilon, delta),
        see ``dp_guarantee_["budget_split"]`` and docs/dp.md. ``"data"``: the training data's
        min and max, and the model is NOT private (``PrivacyLeakWarning``).
    data_norm : float, default=None
        Public bound on a row's L2 norm; longer rows (after the per-feature clip) are scaled onto
        it. ``None``: one third of the L2 radius of the ``bounds_X`` box (√d for features
        standardized and clipped at ±3). ``inf``: no row clipping.
    accountant : BudgetAccountant, default=None
        Where the budget is checked and spent; ``None`` uses the default accountant.
    random_state : int, numpy Generator or None, default=None
        ``None`` draws noise from the operating system's CSPRNG. A seed makes fits reproducible
        **for tests only**: anyone who knows the seed can remove the noise.
    method : {"auto", "objpert", "dpgd"}, default="auto"
        "auto": DP gradient descent for every label set (at ε = ∞ with two classes, the exact
        Newton solve); "objpert" keeps (approximate) objective perturbation for two classes.
        With estimated bounds DP-GD's Gaussian noise composes with theirs in zCDP (docs/dp.md).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string column names.
    bounds_X_ : (ndarray, ndarray)
        Per-feature clipping applied in ``fit``.
    data_norm_ : float or None
        Row L2-norm clip applied after the per-feature clip (None: none).
    dp_guarantee_ : dict
        The privacy guarantee (JSON-serializable); ``heml.export`` stores it in the model file.
    noise_ : dict
        Noise scale and hyperparameters actually used (public).

    Warns
    -----
    PrivacyLeakWarning
        When neither ``bounds_X`` nor a finite ``data_norm`` is given.

    Raises
    ------
    ConvergenceError
        If the Newton solver does not reach the public gradient tolerance γ in
        ``NEWTON_MAX_ITER`` steps (the message is fixed: it does not depend on the data). The
        budget is spent all the same, since the data were used.
    BudgetError
        If the accountant cannot pay (ε, δ). The spend is reserved atomically before the data
        values are used, so two fits sharing an accountant cannot both pass; a refused fit
        leaves the estimator unfitted.

    Notes
    -----
    Neighbouring datasets differ by replacing one record. Rows become a = [x, κ]/√(R² + κ²)
    with ‖a‖ ≤ 1 (κ = R/2 carries the intercept). Objective perturbation's exact minimizer
    θ* = argmin Σ log(1 + exp(-yᵢaᵢᵀθ)) + λ‖θ‖²/2 + bᵀθ, b ~ N(0, σ²I), is (ε₁, δ₁)-DP with
    ε₁ = log(1 + β/λ) + ε_G and δ₁ = δ_G(σ/2; ε_G) + 2δ_G(σ; ε_G) (β = 1/4; δ_G from
    dp-accounting). The solver stops at θ̃ with gradient norm ≤ γ, so ‖θ̃ - θ*‖ ≤ γ/λ
    (λ-strong convexity), and θ̃ + N(0, σ₂²I) is released with σ₂ calibrated to sensitivity
    2γ/λ at (ε₂, δ₂): the whole is (ε₁ + ε₂, δ₁ + δ₂)-DP (AMP, Iyengar et al. 2019; shares
    in ``dp_guarantee_["hyperparameters"]["epsilon_shares"]``). DP gradient descent clips each
    example's gradient to C = 0.5 and adds N(0, σ²) to the summed gradient at each of T steps;
    the T Gaussian releases (replace-one sensitivity 2C) are composed and calibrated with
    dp-accounting. ``classes`` alone (with n, d, ε, δ) fixes which mechanism runs and T.

    References
    ----------
    R. Iyengar, J. Near, D. Song, O. Thakkar, A. Thakurta, L. Wang. Towards practical
    differentially private convex optimization. IEEE S&P 2019. K. Chaudhuri, C. Monteleoni,
    A. Sarwate. Differentially private empirical risk
    minimization. JMLR 12, 2011. D. Kifer, A. Smith, A. Thakurta. Private convex empirical risk
    minimization and high-dimensional regression. COLT 2012. M. Abadi et al. Deep learning with
    differential privacy. CCS 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from heml.dp import DPLogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((4000, 2))
    >>> y = (X[:, 0] - X[:, 1] > 0).astype(int)
    >>> clf = DPLogisticRegression(
    ...     epsilon=1.0, classes=[0, 1], bounds_X=(-3, 3), random_state=0
    ... ).fit(X, y)
    >>> clf.predict([[2.0, -2.0], [-2.0, 2.0]])
    array([1, 0])
    """

    def __init__(
        self,
        epsilon=1.0,
        delta=1e-5,
        classes=None,
        bounds_X=None,
        data_norm=None,
        accountant=None,
        random_state=None,
        method="auto",
    ):
        self.epsilon = epsilon
        self.delta = delta
        self.classes = classes
        self.bounds_X = bounds_X
        self.data_norm = data_norm
        self.accountant = accountant
        self.random_state = random_state
        self.method = method

    @numpy_error_defaults
    def fit(self, X, y):
        """Fit with (epsilon, delta)-DP; the budget is reserved before the data values are used.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        """
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        eps, delta, accountant = self._begin_fit()
        private = math.isfinite(eps)
        declared = None if self.classes is None else public_classes(self.classes)
        if declared is None and private:
            raise ValueError(NO_CLASSES_MESSAGE)
        X, y = self._validate_training_data(X, y)
        classes, y_idx = encode_labels(y, declared)
        n, d = X.shape
        check_delta_vs_n(eps, delta, n)
        k = classes.size
        method = self.method
        if method == "auto":
            # DP gradient descent for every label set at finite ε: with declared bounds it beat
            # objective perturbation on two classes at every ε measured (docs/dp.md), and with
            # estimated bounds its Gaussian noise composes with theirs in zCDP. ε = ∞ with two
            # classes: the exact Newton solve (no noise, no privacy). All public choices.
            method = "objpert" if k == 2 and not private else "dpgd"
        if method == "objpert" and k > 2:
            raise ValueError(
                "objective perturbation handles two classes; use method='dpgd' (or 'auto') "
                f"for {k} classes"
            )
        noise = NoiseSource(self.random_state)
        # from here on the data values are used: pay first (atomic check-and-spend)
        # bounds that cannot be used, and a plan that cannot work, are refused before paying
        check_fit_plan(self, n, d, eps, delta)
        self._reserve(accountant, eps, delta, f"DPLogisticRegression/{method}")

        if fit_with_estimated_bounds(self, X, y, eps, delta, noise) is not None:
            return self  # bounds estimated with DP inside (eps, delta): docs/dp.md
        lo, hi, row_norm, x_source = resolve_feature_bounds(
            X, self.bounds_X, self.data_norm, private=private
        )
        Xc = clip_rows(X, lo, hi, row_norm)
        cx = (lo + hi) / 2.0 if row_norm is None else np.zeros(d)
        R = row_bound(lo, hi, row_norm)
        R = R if R > 0 else 1.0
        kappa = INTERCEPT_FRACTION * R
        scale = math.sqrt(R**2 + kappa**2)
        A = np.hstack([Xc - cx, np.full((n, 1), kappa)]) / scale

        if method == "objpert":
            theta, details, failure = _objective_perturbation(A, y_idx, eps, delta, noise)
            Wa = theta[None, :]
            mechanism = (
                "approximate minima perturbation (Iyengar et al. 2019) around Gaussian objective "
                "perturbation (Kifer et al. 2012; replace-one analysis in heml docs/dp.md) on "
                "the logistic loss"
            )
            label = cal.accountant_label(
                "analytic Gaussian (objective-perturbation bound) + Gaussian (AMP residual), "
                "basic composition"
            )
        else:
            Wa, details = _dp_gradient_descent(A, y_idx, k, eps, delta, noise)
            failure = None
            if k == 2:  # two softmax rows -> one logistic row
                Wa = (Wa[1] - Wa[0])[None, :]
            mechanism = (
                "full-batch DP gradient descent on the softmax loss (per-example clipping, "
                "Gaussian noise; Abadi et al. 2016)"
                if private
                else "exact maximum likelihood (epsilon=inf)"
            )
            label = cal.accountant_label("analytic Gaussian + Gaussian composition")
        if failure is not None:
            raise ConvergenceError(failure)

        coef = Wa[:, :d] / scale
        intercept = Wa[:, d] * kappa / scale - coef @ cx
        self.classes_ = classes
        self.coef_ = coef
        self.intercept_ = intercept
        self.bounds_X_ = (lo, hi)
        self.data_norm_ = row_norm
        self.noise_ = details
        self.dp_guarantee_ = self._guarantee(
            epsilon=eps,
            delta=delta,
            mechanism=mechanism if private else "exact maximum likelihood (epsilon=inf)",
            accountant=label,
            hyperparameters={
                "method": method,
                "classes": "declared (public)" if declared is not None else "read from y",
                "intercept_column": kappa,
                **details,
            },
            bounds={
                "X": {"lower": lo, "upper": hi, "source": x_source},
                "data_norm": row_norm,
                "row_scale": scale,
            },
            n_samples=n,
        )
        if private:
            self.dp_guarantee_["data_universe"] = DATA_UNIVERSE
            self.dp_guarantee_["not_covered"].insert(0, OUTSIDE_UNIVERSE_NOT_COVERED)
        return self

    # ------------------------------------------------------------------ prediction
    def decision_function(self, X):
        """Scores on X clipped as in ``fit``: (n_samples,) for two classes, else (n, n_classes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        X = clip_rows(X, *self.bounds_X_, self.data_norm_, getattr(self, "feature_map_", None))
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X):
        """Class labels, shape (n_samples,)."""
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[idx]

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes) (sigmoid or softmax)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """Log of ``predict_proba``."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack([-np.logaddexp(0, scores), -np.logaddexp(0, -scores)])
        return log_softmax(scores, axis=1)


# ---------------------------------------------------------------------- labels
def public_classes(classes) -> np.ndarray:
    """The declared label set as a sorted array of at least two distinct labels."""
    if isinstance(classes, str | bytes):
        raise ValueError(f"classes must be a sequence of labels, got the string {classes!r}")
    try:
        arr = np.asarray(list(classes))
    except TypeError:
        raise ValueError(f"classes must be a sequence of labels, got {classes!r}") from None
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"classes must list at least two labels, got {classes!r}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"classes must be finite labels, got {classes!r}")
    try:
        uniq = np.unique(arr)
    except TypeError:
        raise ValueError(
            f"classes must be labels of one comparable type, got {classes!r}"
        ) from None
    if uniq.size != arr.size:
        raise ValueError(f"classes has duplicate labels: {classes!r}")
    return uniq


def encode_labels(y, declared: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(classes_, index of each row's label in classes_).

    With a declared label set the result does not depend on which labels occur in ``y``; a
    label outside it raises ``UNKNOWN_LABEL_MESSAGE``, which names neither label nor count.
    """
    if declared is None:  # epsilon = inf only: nothing private to protect
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(
                f"DPLogisticRegression needs samples of at least 2 classes; got 1 class "
                f"({classes[0]!r})"
            )
        return classes, y_idx
    index = {label: i for i, label in enumerate(declared.tolist())}
    try:
        y_idx = np.fromiter((index[label] for label in np.asarray(y).tolist()), np.intp, len(y))
    except (KeyError, TypeError):  # TypeError: an unhashable label
        y_idx = None
    if y_idx is None:  # raised outside the handler: no __context__ holding the label
        raise ValueError(UNKNOWN_LABEL_MESSAGE)
    return declared, y_idx


# ---------------------------------------------------------------------- objective perturbation
def objpert_lambda_rule(d_aug: int):
    """λ as a function of σ (public): about half the expected norm of the noise vector b."""
    return lambda sigma: OBJPERT_LAMBDA_FACTOR * sigma * math.sqrt(d_aug)


# The solver stops when the gradient norm it *computes* is below γ/2, while the analysis
# covers a true norm up to γ: the float64 rounding of that computed norm (≈ n·2^-52 of the
# terms' size, far below γ/2 at γ = 1e-11·n) cannot push the true one past γ.
SOLVER_STOP_FRACTION = 0.5


def amp_gamma(n: int, lam: float, sigma: float, p: int) -> float:
    """The public gradient-norm tolerance γ at which the solver stops (n, λ, σ, p public)."""
    return AMP_GAMMA_FACTOR * (n + lam + sigma * math.sqrt(p) + 1.0)


def amp_residual_sensitivity(gamma: float, lam: float, sigma: float, magnitude: float, p: int):
    """L2 distance that the residual Gaussian must cover between two neighbours' outputs.

    Objective perturbation's proof holds for the continuous b; the b actually used is rounded
    to the lattice of step s = lattice_step(σ), which moves it by at most s·√p/2 and so adds
    s·√p/2 to the gradient norm at the stopped point: ‖θ̃ − θ*‖ ≤ (γ + s·√p/2)/λ on each of
    the two neighbours (λ-strong convexity), plus one output-lattice step per coordinate.
    """
    b_rounding = rounding_slack(sigma, p)  # s·√p: s·√p/2 on each neighbour
    return (2.0 * gamma + b_rounding) / lam + rounding_slack(magnitude, p)


def _objective_perturbation(A, y_idx, eps, delta, noise: NoiseSource):
    """θ̃ + N(0, σ₂²) for θ̃ within γ/λ of the objective-perturbation minimizer (AMP)."""
    n, p = A.shape
    Z = A * (2.0 * y_idx - 1.0)[:, None]
    if math.isinf(eps):
        # no privacy, no AMP: solve to about 10^3 times the gradient's floating-point error
        theta, converged = _newton_logistic(Z, 0.0, np.zeros(p), 1e-11 * (n + 1.0))
        details = {"lambda": 0.0, "sigma": 0.0, "solver": "Newton"}
        failure = None
        if not converged:
            failure = CONVERGENCE_MESSAGE.format(max_iter=NEWTON_MAX_ITER) + (
                " With epsilon=inf there is no ridge: the classes are probably separable, so "
                "the maximum-likelihood model does not exist."
            )
        return theta, details, failure

    c = cal.calibrate_amp(
        eps,
        delta,
        OBJPERT_BETA,
        objpert_lambda_rule(p),
        OBJPERT_MAX_JACOBIAN_SHARE,
        epsilon_share=AMP_EPSILON_SHARE,
        delta_share=AMP_DELTA_SHARE,
    )
    lam = c.objpert.lam
    gamma = amp_gamma(n, lam, c.objpert.sigma, p)
    magnitude = (n + 1.0) / lam  # public bound on ‖θ*‖ without b: sets the output's lattice
    sensitivity2 = amp_residual_sensitivity(gamma, lam, c.objpert.sigma, magnitude, p)
    sigma2 = c.residual_multiplier * sensitivity2
    b = noise.release(np.zeros(p), c.objpert.sigma, c.objpert.sigma)
    theta, converged = _newton_logistic(Z, lam, b, gamma * SOLVER_STOP_FRACTION)
    failure = None if converged else CONVERGENCE_MESSAGE.format(max_iter=NEWTON_MAX_ITER)
    released = noise.release(theta, sigma2, magnitude)
    details = {
        "lambda": lam,
        "sigma": c.objpert.sigma,
        "eps_jacobian": c.objpert.eps_jacobian,
        "eps_gaussian": c.objpert.eps_gaussian,
        "beta": OBJPERT_BETA,
        "lambda_rule": f"max({OBJPERT_LAMBDA_FACTOR}*sigma*sqrt(d+1), "
        f"beta/(exp(eps*{OBJPERT_MAX_JACOBIAN_SHARE})-1))",
        "solver": "Newton",
        "max_iter": NEWTON_MAX_ITER,
        "gradient_tolerance": gamma,
        "gradient_tolerance_rule": f"{AMP_GAMMA_FACTOR:g}*(n + lambda + sigma*sqrt(d+1) + 1)",
        "sigma_residual": sigma2,
        "residual_sensitivity": sensitivity2,
        "epsilon_shares": {
            "objective_perturbation": c.epsilon_objpert,
            "amp_residual": c.epsilon_residual,
        },
        "delta_shares": {
            "objective_perturbation": c.delta_objpert,
            "amp_residual": c.delta_residual,
        },
    }
    return released, details, failure


def amp_release(Z, lam: float, sigma: float, sigma2: float, gamma: float, noise: NoiseSource):
    """The AMP mechanism with explicit (λ, σ, σ₂, γ), for white-box tests: returns the released
    θ and whether the solver reached γ. ``_objective_perturbation`` is the calibrated caller."""
    p = Z.shape[1]
    b = noise.release(np.zeros(p), sigma, sigma)
    theta, converged = _newton_logistic(Z, lam, b, gamma * SOLVER_STOP_FRACTION)
    magnitude = (Z.shape[0] + 1.0) / lam
    return noise.release(theta, sigma2, magnitude), converged


def _newton_logistic(Z, lam, b, tol):
    """Minimize Σ log(1 + exp(-zᵢᵀθ)) + λ‖θ‖²/2 + bᵀθ by damped Newton steps until the
    gradient norm is at most ``tol``; returns (θ, reached)."""
    p = Z.shape[1]
    theta = np.zeros(p)
    eye = np.eye(p)

    def objective(t):
        return float(np.sum(np.logaddexp(0.0, -(Z @ t))) + 0.5 * lam * t @ t + b @ t)

    def gradient(t):
        return -(Z.T @ expit(-(Z @ t))) + lam * t + b

    value = objective(theta)
    grad = gradient(theta)
    for _ in range(NEWTON_MAX_ITER):
        gnorm = float(np.linalg.norm(grad))
        if not math.isfinite(gnorm):
            break
        if gnorm <= tol:
            return theta, True
        m = Z @ theta
        w = expit(m) * expit(-m)
        H = (Z.T * w) @ Z + lam * eye
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, grad, rcond=None)[0]
        slope = float(grad @ step)
        t = 1.0
        while True:
            candidate = theta - t * step
            new_value = objective(candidate)
            new_grad = gradient(candidate)
            if new_value <= value - 1e-4 * t * slope:
                break
            # near the optimum the objective no longer resolves the decrease in floating
            # point: accept a step that shrinks the gradient instead
            flat = abs(new_value - value) <= 1e-12 * (1.0 + abs(value))
            if flat and np.linalg.norm(new_grad) < gnorm:
                break
            t *= 0.5
            if t < 1e-10:
                break
        theta, value, grad = candidate, new_value, new_grad
    return theta, bool(float(np.linalg.norm(grad)) <= tol)


# ---------------------------------------------------------------------- DP gradient descent
def dpgd_steps(n: int, k: int, d_aug: int, eps: float, delta: float) -> int:
    """The classifier's number of steps T: the shared rule with its cap DPGD_MAX_STEPS."""
    return _dpgd.dpgd_steps(n, k, d_aug, eps, delta, DPGD_MAX_STEPS)


def averaging_start(T: int) -> int:
    """First iterate (1-based) of the classifier's tail average (public, from T only)."""
    return _dpgd.averaging_start(T, DPGD_AVERAGE_MIN_STEPS)


def clipped_gradient_sum(A, Y, W, clip: float, row_norms=None) -> np.ndarray:
    """Σᵢ clip(∇ℓᵢ(W)) for the softmax loss: each example's gradient (pᵢ − yᵢ)aᵢᵀ scaled onto
    Frobenius norm ``clip`` if longer. Replacing one example moves the sum by at most 2·clip
    (L2), the sensitivity each step's Gaussian is calibrated to. ``row_norms``: ‖aᵢ‖, when the
    caller has them (saves a pass over A per step)."""
    E = A @ W.T  # softmax in place (scipy's allocates several n x k temporaries per step)
    E -= E.max(axis=1, keepdims=True)
    np.exp(E, out=E)
    E /= E.sum(axis=1, keepdims=True)
    E -= Y
    if row_norms is None:
        row_norms = np.linalg.norm(A, axis=1)
    g_norm = np.linalg.norm(E, axis=1) * row_norms
    E *= np.minimum(1.0, clip / np.maximum(g_norm, 1e-300))[:, None]
    return E.T @ A


def _dp_gradient_descent(A, y_idx, k, eps, delta, noise: NoiseSource):
    n, p = A.shape
    Y = np.zeros((n, k))
    Y[np.arange(n), y_idx] = 1.0
    if math.isinf(eps):
        return _softmax_mle(A, Y), {"steps": 0, "sigma": 0.0, "solver": "L-BFGS (exact)"}

    T = dpgd_steps(n, k, p, eps, delta)
    row_norms = np.linalg.norm(A, axis=1)
    # one BLAS thread: the products here are n x (d + 1) by (d + 1) x k, too thin for threads
    # to pay (measured 10x slower with 2 threads on a busy 2-core machine at n = 100k, d = 30)
    with threadpool_limits(limits=1, user_api="blas"):
        W, details = noisy_gradient_descent(
            lambda W: clipped_gradient_sum(A, Y, W, DPGD_CLIP, row_norms),
            (k, p),
            n=n,
            steps=T,
            clip=DPGD_CLIP,
            learning_rate=DPGD_LR,
            epsilon=eps,
            delta=delta,
            noise=noise,
            name="W",
            average_min_steps=DPGD_AVERAGE_MIN_STEPS,
        )
    details = {
        **details,
        "step_rule": f"T = clip(round(nu^2 * {_dpgd.DPGD_STEP_RULE}), {_dpgd.DPGD_MIN_STEPS}, "
        f"{DPGD_MAX_STEPS}), nu = n / (m(eps, delta) * sqrt(k * (d + 1)))",
    }
    return W, details


def _softmax_mle(A, Y):
    """Unpenalized multinomial maximum likelihood (epsilon = inf), solved to tight tolerance."""
    n, p = A.shape
    k = Y.shape[1]

    def f(w):
        W = w.reshape(k, p)
        S = A @ W.T
        lse = np.logaddexp.reduce(S, axis=1)
        loss = float(np.sum(lse) - np.sum(S * Y))
        G = (softmax(S, axis=1) - Y).T @ A
        return loss / n, G.ravel() / n

    res = minimize(
        f,
        np.zeros(k * p),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "gtol": 1e-10, "ftol": 1e-15},
    )
    W = res.x.reshape(k, p)
    return W - W.mean(axis=0, keepdims=True)
