"""Membership-inference attacks on per-record statistics: threshold and LiRA (offline, online).

All attacks return scores with the package convention: higher = more likely a member.

* ``threshold``: the LOSS/margin attack of Yeom et al. (2018): the score is the statistic itself
  (a record the model fits well is guessed to be a member). No shadow models.
* ``lira_offline``: Carlini et al. (2022), offline variant. From the shadow models that did *not*
  train on the record, fit a Gaussian N(μ_out, σ_out²) to its statistic; the score is
  ``−log P_out[S ≥ s]``, the one-sided test of the paper. (Carlini's reference code uses the
  two-sided ``−log pdf``, which also flags records the target fits unusually *badly*; the
  one-sided test is what the paper describes and what the convention needs.)
* ``lira_online``: the Gaussian likelihood ratio ``log N(s; μ_in, σ_in²) − log N(s; μ_out, σ_out²)``
  with Gaussians fitted to the shadows that did and did not train on the record.

Variances: per record, or pooled over records (Carlini's "fixed variance", recommended with few
shadows). Pooled here means the within-record variance averaged over records, not the variance of
all statistics together (which would add the spread *between* records). ``fix_variance=None``
picks pooled unless every record has at least ``PER_RECORD_VARIANCE_MIN`` shadows on each side.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

ATTACKS = ("threshold", "lira_offline", "lira_online")
ATTACK_TITLES = {
    "threshold": "LOSS/margin threshold",
    "lira_offline": "LiRA offline",
    "lira_online": "LiRA online",
}
#: per-record variances need this many shadow statistics per side (LeakPro uses the same cut)
PER_RECORD_VARIANCE_MIN = 31
_VAR_FLOOR = 1e-24


class _Fit:
    """Gaussian fits per record from masked sums (count, mean, within-record sum of squares)."""

    def __init__(self, count: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> None:
        self.count = count
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = total / count
            self.ss = np.maximum(total_sq - count * self.mean**2, 0.0)

    def variance(self, pooled: bool, floor: float) -> np.ndarray | float:
        dof = self.count - 1
        if pooled:
            ok = dof > 0
            den = dof[ok].sum()
            var = self.ss[ok].sum() / den if den > 0 else 0.0
            return max(float(var), floor)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(dof > 0, self.ss / np.maximum(dof, 1), np.nan)
        return np.maximum(var, floor)


def _resolve_fix_variance(fix_variance: bool | None, n_in: np.ndarray, n_out: np.ndarray) -> bool:
    if fix_variance is None:
        return bool(min(n_in.min(), n_out.min()) < PER_RECORD_VARIANCE_MIN)
    return bool(fix_variance)


def _scores(s, fit_in: _Fit, fit_out: _Fit, pooled: bool, floor: float) -> dict[str, np.ndarray]:
    if (fit_out.count < 1).any():
        raise ValueError("LiRA needs at least one shadow model without each record")
    if (fit_in.count < 1).any():
        raise ValueError("online LiRA needs at least one shadow model with each record")
    sd_out = np.sqrt(fit_out.variance(pooled, floor))
    sd_in = np.sqrt(fit_in.variance(pooled, floor))
    if np.isnan(sd_out).any() or np.isnan(sd_in).any():
        raise ValueError("per-record variances need two shadows per side; use fix_variance=True")
    z_out = (s - fit_out.mean) / sd_out
    z_in = (s - fit_in.mean) / sd_in
    return {
        "threshold": s.copy(),
        "lira_offline": -log_ndtr(-z_out),
        "lira_online": 0.5 * (z_out**2 - z_in**2) + np.log(sd_out) - np.log(sd_in),
    }


def lira(
    target_stats,
    shadow_stats,
    shadow_in,
    *,
    online: bool = True,
    fix_variance: bool | None = None,
) -> np.ndarray:
    """LiRA scores of one target model's statistics, given shadow models with known membership.

    Parameters
    ----------
    target_stats : array-like of shape (n,)
        The target model's statistic on each candidate record (see ``membership_signal``).
    shadow_stats : array-like of shape (k, n)
        The same statistic under k shadow models.
    shadow_in : array-like of bool, shape (k, n)
        ``shadow_in[j, i]``: shadow j was trained on record i.
    online : bool, default=True
        Online (likelihood ratio, needs shadows with and without each record) or offline
        (one-sided test against the shadows without the record).
    fix_variance : bool or None
        Pool the variance over records (None: pool unless every record has ≥ 32 shadows a side).

    Returns
    -------
    ndarray of shape (n,), higher = more likely a member.
    """
    s = np.asarray(target_stats, dtype=np.float64).reshape(-1)
    S = np.asarray(shadow_stats, dtype=np.float64)
    inn = np.asarray(shadow_in, dtype=bool)
    if S.ndim != 2 or S.shape[1] != s.size or inn.shape != S.shape:
        raise ValueError(f"shadow_stats {S.shape} and shadow_in {inn.shape} must be (k, {s.size})")
    center = S.mean(axis=0)
    Sc, sc = S - center, s - center
    fit_in = _Fit(inn.sum(0), (Sc * inn).sum(0), (Sc**2 * inn).sum(0))
    out = ~inn
    fit_out = _Fit(out.sum(0), (Sc * out).sum(0), (Sc**2 * out).sum(0))
    pooled = _resolve_fix_variance(fix_variance, fit_in.count, fit_out.count)
    floor = _VAR_FLOOR * max(1.0, float(np.mean(S**2)))
    if not online:
        if (fit_out.count < 1).any():
            raise ValueError("LiRA needs at least one shadow model without each record")
        sd_out = np.sqrt(fit_out.variance(pooled, floor))
        return -log_ndtr(-(sc - fit_out.mean) / sd_out)
    return _scores(sc, fit_in, fit_out, pooled, floor)["lira_online"]


def leave_one_out_scores(
    stats, keep, *, fix_variance: bool | None = None
) -> tuple[dict[str, np.ndarray], bool]:
    """Every model in turn is the target, all the others its shadows.

    Parameters
    ----------
    stats : array-like of shape (m, n)
        Statistic of each of n records under each of m models.
    keep : array-like of bool, shape (m, n)
        ``keep[j, i]``: model j was trained on record i.

    Returns
    -------
    ({attack: scores of shape (m, n)}, fix_variance used). Row j holds the scores of target j,
    computed without any use of model j's own statistics except as the observation.
    """
    S = np.asarray(stats, dtype=np.float64)
    K = np.asarray(keep, dtype=bool)
    if S.ndim != 2 or K.shape != S.shape:
        raise ValueError(f"stats {S.shape} and keep {K.shape} must both be (models, records)")
    if S.shape[0] < 3:
        raise ValueError(f"leave-one-out LiRA needs at least 3 models, got {S.shape[0]}")
    Sc = S - S.mean(axis=0)
    Kout = ~K
    sums = {
        "in": (K.sum(0), (Sc * K).sum(0), (Sc**2 * K).sum(0)),
        "out": (Kout.sum(0), (Sc * Kout).sum(0), (Sc**2 * Kout).sum(0)),
    }
    n_in_min = sums["in"][0] - K.any(0)  # a record loses at most one in-shadow to the target
    n_out_min = sums["out"][0] - Kout.any(0)
    pooled = _resolve_fix_variance(fix_variance, n_in_min, n_out_min)
    floor = _VAR_FLOOR * max(1.0, float(np.mean(S**2)))
    result = {name: np.empty_like(S) for name in ATTACKS}
    for t in range(S.shape[0]):
        s, k, o = Sc[t], K[t], Kout[t]
        c, t1, t2 = sums["in"]
        fit_in = _Fit(c - k, t1 - s * k, t2 - s**2 * k)
        c, t1, t2 = sums["out"]
        fit_out = _Fit(c - o, t1 - s * o, t2 - s**2 * o)
        for name, v in _scores(s, fit_in, fit_out, pooled, floor).items():
            result[name][t] = v
    result["threshold"] = S.copy()
    return result, pooled


def balanced_keep(n_models: int, n_records: int, rng: np.random.Generator) -> np.ndarray:
    """Membership matrix (models × records): each record in exactly ⌊m/2⌋ models, at random.

    This is the split of Carlini et al.'s reference code: it gives every record the same number
    of in- and out-shadows (±1), which LiRA needs, while each model sees about half the records.
    """
    ranks = rng.random((n_models, n_records)).argsort(axis=0).argsort(axis=0)
    return ranks < n_models // 2
