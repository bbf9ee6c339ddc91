"""Helpers shared by the DP tests."""

from __future__ import annotations

import numpy as np


def fit_rho(guarantee: dict) -> float:
    """ρ of a whole DP-GD fit with estimated bounds, re-derived from what its guarantee states:
    the boxes' exponential mechanisms (ε_r²/8 each: features, scale, target), the centre and
    spread releases, and the model's T Gaussian steps (multiplier m/√T)."""
    b, hp = guarantee["budget_split"]["bounds"], guarantee["hyperparameters"]
    rho = (
        b["feature_releases"] * b["epsilon_per_feature_release"] ** 2
        + b["epsilon_scale_release"] ** 2
        + b["epsilon_target_release"] ** 2
    ) / 8 + (b["rho_center_release"] + b["rho_spread_release"])
    return rho + 1 / (2 * (hp["noise_multiplier"] / np.sqrt(hp["steps"])) ** 2)
