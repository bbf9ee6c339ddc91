"""Full-batch DP gradient descent, shared by the classifier (softmax loss) and regression
(squared loss): T noisy steps from 0 and the mean of the tail of the iterates.

Each step releases ``clipped_sum(W)`` (a sum of per-example gradients each scaled onto L2
norm ``clip``, so replacing one example moves it by at most 2·clip) plus Gaussian noise on the
lattice of ``NoiseSource.release``; the T releases are composed exactly with dp-accounting and
calibrated to (ε, δ). Averaging iterates is post-processing of the releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import _calibration as cal
from ._noise import NoiseSource, rounding_slack

# T = ν²/8 clipped to [DPGD_MIN_STEPS, the caller's cap], with ν = n / (m · √(k(d+1))) and m
# the (ε, δ)-Gaussian multiplier: public (n, d, k, ε, δ only); both estimators use it.
DPGD_MIN_STEPS = 5
DPGD_STEP_RULE = 1.0 / 8.0


def dpgd_steps(n: int, k: int, d_aug: int, eps: float, delta: float, max_steps: int) -> int:
    """Number of steps T for n rows of d_aug coordinates and k outputs (public quantities)."""
    import dp_accounting

    m = dp_accounting.get_sigma_gaussian(eps, delta)
    nu = n / (m * math.sqrt(k * d_aug))
    return int(min(max(round(DPGD_STEP_RULE * nu * nu), DPGD_MIN_STEPS), max_steps))


def averaging_start(steps: int, min_steps: int) -> int:
    """First iterate (1-based) of the released average: the last half of the iterates when
    ``steps`` ≥ ``min_steps``, else ``steps`` (the last iterate alone). Public: from T only."""
    return steps // 2 + 1 if steps >= min_steps else steps


def noisy_gradient_descent(
    clipped_sum: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, ...],
    *,
    n: int,
    steps: int,
    clip: float,
    learning_rate: float,
    epsilon: float,
    delta: float,
    noise: NoiseSource,
    name: str,
    average_min_steps: int,
) -> tuple[np.ndarray, dict]:
    """W_t = W_{t-1} - (learning_rate / n) · (clipped_sum(W_{t-1}) + N(0, σ²)), W_0 = 0, for
    t = 1 … steps; returns the mean of W_first … W_steps (``first`` by ``averaging_start``
    with the caller's ``average_min_steps``) and the public details: steps, step size, the
    averaged iterates (``name`` is the parameter's name in their description), the clip, σ,
    its multiplier and the sensitivity 2·clip plus the lattice's rounding slack."""
    first = averaging_start(steps, average_min_steps)
    magnitude = n * clip
    sensitivity = 2.0 * clip + rounding_slack(magnitude, int(np.prod(shape)))
    multiplier = cal.calibrate_gaussian_scale(
        lambda s: cal.gaussian_event([s], count=steps), epsilon, delta
    )
    sigma = multiplier * sensitivity
    W = np.zeros(shape)
    total = np.zeros(shape)
    for t in range(1, steps + 1):
        W = W - (learning_rate / n) * noise.release(clipped_sum(W), sigma, magnitude)
        if t >= first:  # post-processing of the releases so far: no privacy cost
            total += W
    details = {
        "steps": steps,
        "learning_rate": learning_rate,
        "averaged_iterates": [first, steps],
        "averaging": f"the released {name} is the mean of the iterates {name}_t for t in "
        f"averaged_iterates (the last half when T >= {average_min_steps}, else the last "
        "iterate alone): post-processing of the T noisy gradient releases",
        "clip": clip,
        "sigma": sigma,
        "noise_multiplier": multiplier,
        "sensitivity": sensitivity,
    }
    return total / (steps - first + 1), details
