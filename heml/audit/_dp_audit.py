"""Canary-based DP auditing: an empirical lower bound on ε with a stated confidence.

Method (Jagielski, Ullman, Oprea 2020; Nasr et al. 2021), for the replace-one relation:

1. Fix a training set D and a neighbour D′ in which one record is replaced by a *canary*.
2. Train many times on D′ ("in" runs: canary present) and on D ("out" runs), with fresh
   training randomness each run, and record the canary's statistic (higher = member).
3. Split the runs of each side in two halves. On the *selection* half choose the threshold t and
   which of the two DP inequalities to test, by maximising the bound computed on that half.
4. On the *held-out* half count how often ``statistic ≥ t``, bound the rates with one-sided
   Clopper–Pearson intervals at α/2 each (so both hold together with probability ≥ 1 − α), and
   report ε_LB = max(0, ln((TPR_lo − δ) / FPR_hi)) or, for the complementary event,
   ln((TNR_lo − δ) / FNR_hi).

If the mechanism is (ε, δ)-DP then every event A satisfies P_in[A] ≤ e^ε P_out[A] + δ and
P_out[Aᶜ] ≤ e^ε P_in[Aᶜ] + δ, so with probability ≥ 1 − α the reported ε_LB ≤ ε. A bound above the
claimed ε therefore means, at that confidence, that the mechanism does not deliver its claim.

With N held-out runs a side the bound can never exceed the *ceiling*
ln((CP_lo(N of N) − δ) / CP_hi(0 of N)) ≈ ln(N / ln(2/α)): a deterministic (non-private) training
procedure reaches it, and a larger ε cannot be certified without more runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta

#: canary corners tried: sign patterns of this many smallest-eigenvalue eigenvectors
CANARY_EIGENVECTORS = 20
#: candidate thresholds per tail: order statistics at geometrically spaced ranks
CANDIDATES_PER_TAIL = 128


def cp_lower(k, n, a: float):
    """One-sided Clopper–Pearson lower bound at level ``a`` for k successes in n trials."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = beta.ppf(a, k, n - k + 1)
    return np.where(k <= 0, 0.0, lo)


def cp_upper(k, n, a: float):
    """One-sided Clopper–Pearson upper bound at level ``a`` for k successes in n trials."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hi = beta.ppf(1.0 - a, k + 1, n - k)
    return np.where(k >= n, 1.0, hi)


def _candidates(pooled: np.ndarray) -> np.ndarray:
    """Thresholds to try: every distinct value when few, else geometric ranks from each end.

    The bound is set by tail counts, so candidates are spaced by a constant *ratio* of the
    number of scores beyond them (about 10 % between neighbours), from the most extreme score
    to the median, in both tails. A finer grid reaches no further into the tails; it only lets
    the selection chase noise (the winner's curse), which the held-out half then pays for.
    """
    s = np.sort(pooled)
    values = np.unique(s)
    if values.size > 4 * CANDIDATES_PER_TAIL:
        ranks = np.unique(np.geomspace(1, s.size / 2, CANDIDATES_PER_TAIL).astype(np.int64))
        values = np.unique(np.r_[s[ranks - 1], s[s.size - ranks]])
    # one candidate above everything (flags nobody; only useful for the "<" event)
    return np.r_[values, np.inf]


def _eps_from_counts(hits_in, n_in, hits_out, n_out, delta: float, alpha: float):
    """ε bound for the events "stat ≥ t" (form 0) and "stat < t" (form 1); arrays over t."""
    a = alpha / 2.0
    tpr_lo = cp_lower(hits_in, n_in, a)
    fpr_hi = cp_upper(hits_out, n_out, a)
    tnr_lo = cp_lower(n_out - hits_out, n_out, a)
    fnr_hi = cp_upper(n_in - hits_in, n_in, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        e0 = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        e1 = np.log(np.maximum(tnr_lo - delta, 0.0) / fnr_hi)
    e0 = np.where(np.isfinite(e0), e0, -np.inf)
    e1 = np.where(np.isfinite(e1), e1, -np.inf)
    return e0, e1


@dataclass
class EpsilonLowerBound:
    """Result of :func:`epsilon_lower_bound` (all counts refer to the held-out runs)."""

    epsilon_lb: float
    delta: float
    confidence: float
    ceiling: float
    threshold: float
    event: str  # "score >= t" or "score < t"
    n_in: int
    n_out: int
    hits_in: int  # held-out in-runs with score >= t
    hits_out: int  # held-out out-runs with score >= t
    n_selection_in: int
    n_selection_out: int
    selection_epsilon: float

    def to_dict(self) -> dict:
        return asdict(self)


def epsilon_lower_bound(
    scores_in,
    scores_out,
    *,
    delta: float,
    alpha: float = 0.05,
    selection_fraction: float = 0.5,
) -> EpsilonLowerBound:
    """Empirical ε lower bound from a statistic observed over many in- and out-runs.

    Parameters
    ----------
    scores_in : array-like of shape (r_in,)
        The canary's statistic in runs trained *with* the canary (higher = member).
    scores_out : array-like of shape (r_out,)
        The statistic in runs trained on the neighbouring dataset without it.
    delta : float
        The δ of the guarantee being audited; it is subtracted before taking the ratio.
    alpha : float, default=0.05
        1 − confidence. The bound holds with probability ≥ 1 − α for an (ε, δ)-DP mechanism.
    selection_fraction : float, default=0.5
        Share of each side's runs (the first ones, runs being i.i.d.) used to choose the
        threshold; the rest give the bound.

    Returns
    -------
    EpsilonLowerBound

    Examples
    --------
    A deterministic procedure separates the worlds perfectly; 500 held-out runs a world cap
    what can be certified:

    >>> import numpy as np
    >>> from heml.audit import epsilon_lower_bound
    >>> b = epsilon_lower_bound(np.ones(1000), np.zeros(1000), delta=1e-5)
    >>> round(b.epsilon_lb, 2), b.epsilon_lb == b.ceiling
    (4.91, True)
    """
    s_in = np.asarray(scores_in, dtype=np.float64).reshape(-1)
    s_out = np.asarray(scores_out, dtype=np.float64).reshape(-1)
    if np.isnan(s_in).any() or np.isnan(s_out).any():
        raise ValueError("canary statistics contain NaN")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0.0 < selection_fraction < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got {selection_fraction}")
    k_in = round(s_in.size * selection_fraction)
    k_out = round(s_out.size * selection_fraction)
    if min(k_in, k_out, s_in.size - k_in, s_out.size - k_out) < 1:
        raise ValueError(
            f"need runs on both sides for selection and bound; got {s_in.size} in, {s_out.size} out"
        )
    sel_in, hold_in = np.sort(s_in[:k_in]), s_in[k_in:]
    sel_out, hold_out = np.sort(s_out[:k_out]), s_out[k_out:]

    cand = _candidates(np.r_[sel_in, sel_out])
    hits_in = sel_in.size - np.searchsorted(sel_in, cand, side="left")
    hits_out = sel_out.size - np.searchsorted(sel_out, cand, side="left")
    # simultaneous over candidates (Bonferroni): the choice favours thresholds whose counts are
    # large enough to hold up on fresh runs, instead of the luckiest tail fluctuation
    alpha_sel = alpha / cand.size
    e0, e1 = _eps_from_counts(hits_in, sel_in.size, hits_out, sel_out.size, delta, alpha_sel)
    i0, i1 = int(np.argmax(e0)), int(np.argmax(e1))
    if e0[i0] >= e1[i1]:
        t, form, sel_eps = float(cand[i0]), 0, float(e0[i0])
    else:
        t, form, sel_eps = float(cand[i1]), 1, float(e1[i1])

    h_in = int((hold_in >= t).sum())
    h_out = int((hold_out >= t).sum())
    f0, f1 = _eps_from_counts(h_in, hold_in.size, h_out, hold_out.size, delta, alpha)
    eps = float(f0 if form == 0 else f1)
    c0, _ = _eps_from_counts(hold_in.size, hold_in.size, 0, hold_out.size, delta, alpha)
    return EpsilonLowerBound(
        epsilon_lb=max(0.0, eps),
        delta=float(delta),
        confidence=1.0 - alpha,
        ceiling=max(0.0, float(c0)),
        threshold=t,
        event="score >= t" if form == 0 else "score < t",
        n_in=int(hold_in.size),
        n_out=int(hold_out.size),
        hits_in=h_in,
        hits_out=h_out,
        n_selection_in=int(sel_in.size),
        n_selection_out=int(sel_out.size),
        selection_epsilon=max(0.0, sel_eps) if math.isfinite(sel_eps) else 0.0,
    )


# --------------------------------------------------------------------------- canaries
@dataclass
class Canary:
    """A neighbouring pair built by replacing training row ``replaced_index``.

    The "in" world has ``(x, y)`` at that row; the "out" world has ``(x, y_out)``, or the
    original row when ``y_out`` is None. The audited statistic is the margin (or −|residual|)
    of ``(x, y)``, so it is higher in the "in" world.
    """

    x: np.ndarray
    y: object
    replaced_index: int
    description: str
    y_out: object = None

    def to_dict(self) -> dict:
        return {
            "x": [float(v) for v in self.x],
            "y": _plain(self.y),
            "y_out": _plain(self.y_out),
            "replaced_index": int(self.replaced_index),
            "description": self.description,
        }


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def make_canary(X, y, *, classifier: bool, random_state: int | None = 0) -> Canary:
    """The default canary pair: one outlier, trained with two opposite labels.

    x: a corner of the training data's bounding box, the one a record's influence on the model
    is largest at: among the sign patterns of the covariance's eigenvectors with the smallest
    eigenvalues (features scaled to their range), the corner c maximising
    (c − m)ᵀ(C + λI)⁻¹(c − m), m the box centre, C the covariance, λ = 10⁻³·trace(C)/d.
    A linear model's change from one record is about H⁻¹ times the record's gradient, so this
    favours directions no record constrains; and every corner is as far from the centre as the
    box allows, so an estimator that clips rows to a norm keeps the canary at that norm, while a
    clip to bounds read from the data leaves it where it is.
    Labels: in the "in" world x carries the class a non-private reference model (sklearn
    ``LogisticRegression`` on standardised features) finds least likely, in the "out" world the
    most likely one; for regression, the two ends of the observed target range (the farther from
    the reference ``Ridge`` prediction is "in"). Both worlds put x in place of the same training
    row, chosen at random (``random_state``), so they are neighbours under replace-one and differ
    only in the label: for a regularised or noisy model this doubles the shift of a one-sided
    canary, and for an unregularised one it flips the sign of the score.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    rng = np.random.default_rng(random_state)
    lo, hi = X.min(axis=0), X.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    Z = (X - lo) / scale  # features in units of their range: the box is [0, 1]^d
    d = Z.shape[1]
    cov = np.cov(Z, rowvar=False).reshape(d, d)
    vals, vecs = np.linalg.eigh(cov)
    ridge = 1e-3 * max(float(np.trace(cov)) / d, 1e-12)
    M = (vecs / (vals + ridge)) @ vecs.T  # (C + λI)⁻¹
    best, best_q = None, -np.inf
    for k in range(min(d, CANARY_EIGENVECTORS)):
        signs = np.where(vecs[:, k] >= 0, 1.0, -1.0)
        if signs[np.argmax(np.abs(vecs[:, k]))] < 0:
            signs = -signs  # a deterministic sign
        q = float(signs @ M @ signs)
        if best is None or q > best_q * (1 + 1e-12):
            best, best_q = signs, q
    x = np.where(best > 0, hi, lo)

    if classifier:
        ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
        proba = ref.predict_proba(x[None, :])[0]
        y_in, y_out = ref.classes_[int(np.argmin(proba))], ref.classes_[int(np.argmax(proba))]
        what = (
            f"label {_plain(y_in)!r} (reference p={proba.min():.3g}) in one world and "
            f"{_plain(y_out)!r} (p={proba.max():.3g}) in the other"
        )
    else:
        ref = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
        pred = float(np.ravel(ref.predict(x[None, :]))[0])
        y_lo, y_hi = float(np.min(y)), float(np.max(y))
        y_in, y_out = (y_lo, y_hi) if abs(y_lo - pred) > abs(y_hi - pred) else (y_hi, y_lo)
        what = f"target {y_in:.6g} in one world and {y_out:.6g} in the other"
    j = int(rng.integers(X.shape[0]))
    desc = (
        "a corner of the training data's bounding box in its least-constrained direction, with "
        f"{what}, in place of training row {j}"
    )
    return Canary(x=x, y=y_in, replaced_index=j, description=desc, y_out=y_out)


def plant(X, y, canary: Canary, *, world: str = "in") -> tuple[np.ndarray, np.ndarray]:
    """The training set of one world: ``X, y`` with row ``canary.replaced_index`` replaced.

    ``world="in"`` puts ``(canary.x, canary.y)`` there; ``world="out"`` puts
    ``(canary.x, canary.y_out)``, or leaves the row as it is if ``y_out`` is None.
    """
    if world not in ("in", "out"):
        raise ValueError(f"world must be 'in' or 'out', got {world!r}")
    X2 = np.array(X, dtype=np.float64, copy=True)
    y2 = np.array(y, copy=True)
    label = canary.y if world == "in" else canary.y_out
    if world == "out" and label is None:
        return X2, y2
    if y2.dtype.kind in "US":
        y2 = y2.astype(object)  # a fixed-width string array would truncate a longer label
    X2[canary.replaced_index] = canary.x
    y2[canary.replaced_index] = label
    return X2, y2
