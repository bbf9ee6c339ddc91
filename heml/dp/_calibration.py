"""Noise calibration and composition, through Google's ``dp-accounting``.

Conventions
-----------
* Neighbouring relation: **replace-one** (bounded DP) everywhere.
* A Gaussian release is described by a ``dp_accounting.GaussianDpEvent`` whose
  ``noise_multiplier`` is ``sigma / sensitivity``, where ``sensitivity`` is the release's exact L2
  sensitivity **under replace-one**. For such full-batch (unsampled) releases the Gaussian
  mechanism's privacy profile depends only on that ratio, so dp-accounting's PLD and RDP
  accountants are run with their default ``ADD_OR_REMOVE_ONE`` relation, whose Gaussian PLD is
  exactly "N(0, m²) against N(1, m²)". (dp-accounting's ``REPLACE_ONE`` option would instead
  double a per-record bound, which overstates e.g. the XᵀX sensitivity: √2·B², not 2·B².)
  ``tests/test_dp_calibration.py`` checks both readings against each other where they agree.
* Several Gaussian releases compose into one Gaussian with multiplier (Σ m_i⁻²)^(-1/2);
  dp-accounting computes that equivalence, and ``get_sigma_gaussian`` (the exact analytic
  Gaussian of Balle & Wang 2018) calibrates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
from dp_accounting import pld, rdp

try:  # dp-accounting's own Gaussian-composition helper (exact; used by its RDP accountant)
    from dp_accounting.rdp.rdp_privacy_accountant import (
        _effective_gaussian_noise_multiplier as _dpa_effective_multiplier,
    )
except ImportError:  # pragma: no cover - exercised by a test that hides it
    _dpa_effective_multiplier = None

ACCOUNTANT_NAME = f"dp-accounting {getattr(dp_accounting, '__version__', '')}".strip()


def accountant_label(kind: str) -> str:
    """Name of the analysis, e.g. ``"dp-accounting 0.6.0 analytic Gaussian"``."""
    try:
        from importlib.metadata import version

        v = version("dp-accounting")
    except Exception:  # pragma: no cover
        v = "?"
    return f"dp-accounting {v} {kind}"


def gaussian_event(multipliers: list[float] | tuple[float, ...], count: int = 1):
    """DpEvent of Gaussian releases with these noise multipliers, repeated ``count`` times."""
    events = [dp_accounting.GaussianDpEvent(float(m)) for m in multipliers]
    event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
    if count != 1:
        event = dp_accounting.SelfComposedDpEvent(event, int(count))
    return event


def effective_multiplier(event) -> float:
    """Noise multiplier of the single Gaussian release equivalent to ``event`` (Gaussians only)."""
    if _dpa_effective_multiplier is not None:
        m = _dpa_effective_multiplier(event)
        if not isinstance(m, float):
            raise ValueError(f"not a composition of Gaussian releases: {m!r}")
        return m
    # Fallback through the public API: the multiplier m of one Gaussian release with the same
    # epsilon at a reference delta (exact for Gaussian compositions, slower).
    acc = pld.PLDAccountant()
    acc.compose(event)
    eps = acc.get_epsilon(1e-6)
    return dp_accounting.get_sigma_gaussian(eps, 1e-6)


# dp-accounting solves for the multiplier numerically: in exact arithmetic (mpmath) its answer
# gave up to δ·(1 + 1.5e-9) (ε = 1e6, δ = 1e-30; δ·(1 + 4e-11) at ε = 1e-3, δ = 1e-12). 1e-9
# more noise lowers δ by at least 1e-7 relative on ε in [1e-3, 1e6], δ >= 1e-30 (found by
# review; tests/test_dp_review5.py)
CALIBRATION_MARGIN = 1.0 + 1e-9


def gaussian_multiplier(epsilon: float, delta: float) -> float:
    """σ/Δ of one Gaussian release that is (epsilon, delta)-DP: dp-accounting's analytic
    multiplier with CALIBRATION_MARGIN, which every calibration here uses."""
    return dp_accounting.get_sigma_gaussian(epsilon, delta) * CALIBRATION_MARGIN


def calibrate_gaussian_scale(make_event, epsilon: float, delta: float) -> float:
    """The scale ``s`` such that ``make_event(s)`` is exactly (epsilon, delta)-DP.

    ``make_event(s)`` must be a composition of Gaussian releases whose multipliers are all
    proportional to ``s``. Returns ``math.inf`` for ``epsilon = inf`` (no noise needed: the
    caller uses zero noise).
    """
    if math.isinf(epsilon):
        return 0.0
    target = gaussian_multiplier(epsilon, delta)
    per_unit = effective_multiplier(make_event(1.0))
    return target / per_unit


def pld_epsilon(event, delta: float) -> float:
    """ε of ``event`` at ``delta`` by dp-accounting's PLD accountant (pessimistic estimate)."""
    acc = pld.PLDAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def rdp_epsilon(event, delta: float) -> float:
    """ε of ``event`` at ``delta`` by dp-accounting's RDP accountant (an upper bound, looser)."""
    acc = rdp.RdpAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


# --------------------------------------------------------------------------- objective perturbation
@dataclass(frozen=True)
class ObjPertCalibration:
    """Noise and regularization of Gaussian objective perturbation (see ``docs/dp.md``).

    The released minimizer of ``Σ f(zᵢᵀθ) + (λ/2)‖θ‖² + bᵀθ`` with ``b ~ N(0, σ² I)``,
    ``‖zᵢ‖ ≤ 1``, ``-f' ∈ [0, 1]`` and ``0 ≤ f'' ≤ beta``, is (ε, δ)-DP under replace-one with

        ε = ε_J + ε_G,   ε_J = log(1 + beta/λ),
        δ = δ_G(σ/2; ε_G) + 2·δ_G(σ/1; ε_G),

    where δ_G(m; ε) is the exact δ of the Gaussian mechanism with noise multiplier m.
    """

    sigma: float
    lam: float
    eps_jacobian: float
    eps_gaussian: float
    delta_main: float
    delta_side: float


# Share of δ left for the two sensitivity-1 terms; they are many orders of magnitude smaller
# than the sensitivity-2 term at the same σ, so 1 % is ample and verified below.
_OBJPERT_SIDE_SHARE = 0.01


def calibrate_objpert(
    epsilon: float, delta: float, beta: float, lam_of_sigma, max_jacobian_share: float = 0.5
) -> ObjPertCalibration:
    """Choose (σ, λ) for objective perturbation from public quantities only.

    ``lam_of_sigma(sigma)`` is the caller's regularization rule (public: it may depend on n, d,
    ε, δ). λ is raised if needed so that the Jacobian term uses at most ``max_jacobian_share``
    of ε; σ is then calibrated, through dp-accounting, to the rest.
    """
    delta_main = delta * (1.0 - _OBJPERT_SIDE_SHARE)
    delta_side = delta * _OBJPERT_SIDE_SHARE / 2.0
    # first pass: σ as if the whole ε went to the noise, to evaluate the λ rule
    sigma0 = _objpert_sigma(epsilon, delta_main, delta_side)
    # (capped: expm1 overflows past 709, where the floor is below 1e-300 anyway)
    lam_floor = beta / math.expm1(min(max_jacobian_share * epsilon, 700.0))
    lam = max(float(lam_of_sigma(sigma0)), lam_floor)
    eps_j = math.log1p(beta / lam)
    eps_g = epsilon - eps_j
    sigma = _objpert_sigma(eps_g, delta_main, delta_side)
    return ObjPertCalibration(sigma, lam, eps_j, eps_g, delta_main, delta_side)


def _objpert_sigma(eps_g: float, delta_main: float, delta_side: float) -> float:
    # sensitivity-2 term: σ/2 must be the multiplier for (eps_g, delta_main)
    sigma = 2.0 * gaussian_multiplier(eps_g, delta_main)
    # sensitivity-1 terms: σ/1 must be the multiplier for (eps_g, delta_side) each
    sigma = max(sigma, gaussian_multiplier(eps_g, delta_side))
    return sigma


def objpert_delta(sigma: float, lam: float, beta: float, epsilon: float) -> float:
    """δ that objective perturbation with (σ, λ) achieves at ``epsilon`` (PLD, for tests/audit)."""
    eps_g = epsilon - math.log1p(beta / lam)
    if eps_g < 0:
        return 1.0

    def delta_g(multiplier: float) -> float:
        p = pld.privacy_loss_distribution.from_gaussian_mechanism(standard_deviation=multiplier)
        return p.get_delta_for_epsilon(eps_g)

    return delta_g(sigma / 2.0) + 2.0 * delta_g(sigma)


# --------------------------------------------------------------------------- approximate minima
@dataclass(frozen=True)
class AMPCalibration:
    """Approximate minima perturbation (Iyengar et al. 2019) around objective perturbation.

    Objective perturbation gets (epsilon_objpert, delta_objpert); the solver stops at a public
    gradient tolerance γ, within γ/λ of the exact minimizer (λ-strong convexity), so two
    neighbouring datasets' stopped points, given the same exact minimizer, are within 2γ/λ.
    A Gaussian with multiplier ``residual_multiplier`` on that sensitivity pays
    (epsilon_residual, delta_residual). The two compose (basic composition) to (ε, δ).
    """

    objpert: ObjPertCalibration
    residual_multiplier: float
    epsilon_objpert: float
    delta_objpert: float
    epsilon_residual: float
    delta_residual: float


def calibrate_amp(
    epsilon: float,
    delta: float,
    beta: float,
    lam_of_sigma,
    max_jacobian_share: float,
    *,
    epsilon_share: float,
    delta_share: float,
) -> AMPCalibration:
    """Split (ε, δ) between objective perturbation and the AMP residual Gaussian (fixed public
    shares) and calibrate both."""
    if not (0 < epsilon_share < 1 and 0 < delta_share < 1):
        raise ValueError("AMP shares must be in (0, 1)")
    eps_r, delta_r = epsilon * epsilon_share, delta * delta_share
    eps_o, delta_o = epsilon - eps_r, delta - delta_r
    op = calibrate_objpert(eps_o, delta_o, beta, lam_of_sigma, max_jacobian_share)
    multiplier = gaussian_multiplier(eps_r, delta_r)
    return AMPCalibration(op, multiplier, eps_o, delta_o, eps_r, delta_r)
