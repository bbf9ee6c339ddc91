"""Attack metrics: exact ROC, AUC, advantage, TPR at low FPR, with record-level bootstrap CIs.

One convention everywhere in heml.audit: **a higher score means "more likely a member"**, and
members are the positive class (``is_member == True``). The ROC is computed exactly from the sorted
scores (one vertex per distinct score), never from a grid of thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: FPR levels at which TPR is reported (1 % and 0.1 %).
FPR_LEVELS = (0.01, 0.001)
#: A TPR at FPR level a is flagged unreliable when fewer than this many non-members fall in a·N.
MIN_EXPECTED_FALSE_POSITIVES = 10


@dataclass(frozen=True)
class Roc:
    """An exact ROC curve: one vertex per distinct score, from (0, 0) to (1, 1).

    ``thresholds[i]`` is the score cut ``score >= thresholds[i]`` that gives ``(fpr[i], tpr[i])``;
    ``thresholds[0]`` is ``+inf`` (nobody flagged).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int

    @property
    def auc(self) -> float:
        """Area under the curve (ties count one half, as in the Mann–Whitney statistic)."""
        return float(np.trapezoid(self.tpr, self.fpr))

    @property
    def advantage(self) -> float:
        """Membership advantage max(TPR − FPR) over all thresholds (Yeom et al. 2018)."""
        return float(np.max(self.tpr - self.fpr))

    def tpr_at_fpr(self, level: float) -> float:
        """Highest TPR among the thresholds whose FPR is at most ``level``."""
        return float(self.tpr[np.searchsorted(self.fpr, level, side="right") - 1])

    def sample(self, n_points: int = 300) -> tuple[np.ndarray, np.ndarray]:
        """The exact curve read at 0 and ``n_points`` log-spaced FPRs from 1/N to 1.

        Each TPR is the exact ``tpr_at_fpr`` at that level (not an interpolation), so a step
        plot through the samples never lies above the curve; it is what the report stores.
        """
        lo = 1.0 / max(self.n_nonmembers, 1)
        levels = np.r_[0.0, np.geomspace(lo, 1.0, n_points)]
        idx = np.searchsorted(self.fpr, levels, side="right") - 1
        return levels, self.tpr[idx]

    def vertices(self) -> tuple[np.ndarray, np.ndarray]:
        """The curve without collinear interior points: the same curve, far fewer points."""
        fpr, tpr = self.fpr, self.tpr
        if fpr.size <= 2:
            return fpr.copy(), tpr.copy()
        # a point is interior to a straight run when the steps on either side are parallel
        df, dt = np.diff(fpr), np.diff(tpr)
        cross = df[:-1] * dt[1:] - dt[:-1] * df[1:]
        keep = np.r_[True, cross != 0, True]
        return fpr[keep], tpr[keep]


def _as_scores_labels(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_member).reshape(-1)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("is_member must be boolean (or 0/1), with members = True/1")
        m = m.astype(bool)
    if s.shape != m.shape:
        raise ValueError(f"scores has {s.size} values but is_member has {m.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(m.sum())
    if n_pos == 0 or n_pos == m.size:
        raise ValueError(
            f"need both members and non-members; got {n_pos} members of {m.size} scores"
        )
    return s, m


def roc_curve(scores, is_member) -> Roc:
    """Exact ROC of the attack "flag as member when score >= t", over every distinct score.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Attack scores, higher = more likely a member. ``±inf`` is allowed.
    is_member : array-like of bool, shape (n,)
        Ground truth; members are the positive class.

    Examples
    --------
    >>> from heml.audit import roc_curve
    >>> roc = roc_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    >>> roc.auc, roc.tpr_at_fpr(0.0)
    (0.75, 0.5)
    """
    s, m = _as_scores_labels(scores, is_member)
    order = np.argsort(-s, kind="stable")
    s_sorted, m_sorted = s[order], m[order]
    # the last index of every run of equal scores: ties move together
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tp = np.cumsum(m_sorted)[ends]
    fp = (ends + 1) - tp
    n_pos = int(m.sum())
    n_neg = m.size - n_pos
    return Roc(
        fpr=np.r_[0.0, fp / n_neg],
        tpr=np.r_[0.0, tp / n_pos],
        thresholds=np.r_[np.inf, s_sorted[ends]],
        n_members=n_pos,
        n_nonmembers=n_neg,
    )


def _bootstrap_rates(s_sorted_ends, weights_pos, weights_neg):
    """Weighted cumulative TPR/FPR at tie-group ends for a batch of bootstrap weight rows."""
    tp = np.cumsum(weights_pos, axis=1)[:, s_sorted_ends]
    fp = np.cumsum(weights_neg, axis=1)[:, s_sorted_ends]
    p = tp[:, -1:]
    n = fp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate([np.zeros_like(p), tp / p], axis=1)
        fpr = np.concatenate([np.zeros_like(n), fp / n], axis=1)
    return fpr, tpr


def attack_metrics(
    scores,
    is_member,
    *,
    groups=None,
    fpr_levels=FPR_LEVELS,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> dict:
    """AUC, advantage and TPR at low FPR, with percentile bootstrap confidence intervals.

    Parameters
    ----------
    scores, is_member : array-like of shape (n,)
        As in :func:`roc_curve` (higher = member; members positive).
    groups : array-like of int, shape (n,), optional
        The record each score belongs to. When one record is scored by several target models
        (pooled LiRA evaluation) its scores are correlated; the bootstrap then resamples records,
        not scores, so the intervals account for that. Default: every score its own record.
    fpr_levels : tuple of float
        FPR levels for ``tpr_at_fpr``.
    n_bootstrap : int, default=200
        Bootstrap replicates for the intervals (0: no intervals).
    confidence : float, default=0.95

    Returns
    -------
    dict with ``auc``, ``advantage``, ``tpr_at_fpr`` ({level: value}), the matching ``*_ci``
    intervals, ``tpr_at_fpr_reliable`` ({level: bool}: at least 10 non-members expected above
    the threshold), ``n_members``, ``n_nonmembers``, ``n_records`` and ``ci_method``.
    """
    s, m = _as_scores_labels(scores, is_member)
    roc = roc_curve(s, m)
    out: dict = {
        "auc": roc.auc,
        "advantage": roc.advantage,
        "tpr_at_fpr": {float(a): roc.tpr_at_fpr(a) for a in fpr_levels},
        "tpr_at_fpr_reliable": {
            float(a): a * roc.n_nonmembers >= MIN_EXPECTED_FALSE_POSITIVES for a in fpr_levels
        },
        "n_members": roc.n_members,
        "n_nonmembers": roc.n_nonmembers,
    }
    if groups is None:
        g = np.arange(s.size)
    else:
        g = np.asarray(groups).reshape(-1)
        if g.shape != s.shape:
            raise ValueError(f"groups has {g.size} values for {s.size} scores")
    _, g = np.unique(g, return_inverse=True)
    n_groups = int(g.max()) + 1
    out["n_records"] = n_groups
    if n_bootstrap <= 0:
        out.update(auc_ci=None, advantage_ci=None, tpr_at_fpr_ci=None, ci_method=None)
        return out

    order = np.argsort(-s, kind="stable")
    s_sorted, m_sorted, g_sorted = s[order], m[order], g[order]
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    rng = np.random.default_rng(random_state)
    aucs, advs = [], []
    tprs: dict[float, list] = {float(a): [] for a in fpr_levels}
    # batches keep memory at ~ batch × n floats
    batch = max(1, min(n_bootstrap, 4_000_000 // max(s.size, 1)))
    done = 0
    while done < n_bootstrap:
        b = min(batch, n_bootstrap - done)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        w = counts[:, g_sorted].astype(np.float64)
        fpr, tpr = _bootstrap_rates(ends, w * m_sorted, w * ~m_sorted)
        valid = np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1])
        fpr, tpr = fpr[valid], tpr[valid]
        aucs.append(np.trapezoid(tpr, fpr, axis=1))
        advs.append(np.max(tpr - fpr, axis=1))
        for a in tprs:
            idx = (fpr <= a).sum(axis=1) - 1
            tprs[a].append(tpr[np.arange(tpr.shape[0]), idx])
        done += b
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]

    def ci(values: list) -> list[float]:
        v = np.concatenate(values)
        return [float(x) for x in np.quantile(v, q)] if v.size else [math.nan, math.nan]

    out["auc_ci"] = ci(aucs)
    out["advantage_ci"] = ci(advs)
    out["tpr_at_fpr_ci"] = {a: ci(v) for a, v in tprs.items()}
    out["ci_method"] = (
        f"{confidence:.0%} percentile bootstrap over records ({n_bootstrap} replicates)"
    )
    return out


def dp_tpr_bound(fpr, epsilon: float, delta: float) -> np.ndarray:
    """Largest TPR any test can reach at ``fpr`` against an (ε, δ)-DP mechanism.

    TPR ≤ min(1, e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR)) (Kairouz, Oh, Viswanath 2015).
    """
    f = np.clip(np.asarray(fpr, dtype=np.float64), 0.0, 1.0)
    if math.isinf(epsilon):
        return np.ones_like(f)
    a = math.exp(epsilon) * f + delta
    b = 1.0 - math.exp(-epsilon) * (1.0 - delta - f)
    return np.minimum(1.0, np.minimum(a, b))


def dp_max_advantage(epsilon: float, delta: float) -> float:
    """Largest membership advantage max(TPR − FPR) an (ε, δ)-DP mechanism allows."""
    if math.isinf(epsilon):
        return 1.0
    e = math.exp(epsilon)
    return (e - 1.0 + 2.0 * delta) / (e + 1.0)
