"""Noise for the DP mechanisms: one sampler, two sources.

Every Gaussian draw in ``heml.dp`` goes through :class:`NoiseSource`:

* ``NoiseSource(None)`` (the default, ``random_state=None``) reads the operating system's
  CSPRNG (``os.urandom``, the source behind ``secrets``): 53-bit uniforms turned into normals by
  the Box–Muller transform, vectorized with numpy. Nothing about the stream is reproducible.
* ``NoiseSource(seed)`` uses ``numpy.random.default_rng(seed)`` so that tests and benchmarks are
  reproducible. A seeded stream is predictable and therefore **not private**: never use
  ``random_state`` for a model you release.

Additive releases go through :meth:`NoiseSource.release`, which puts both the exact statistic and
the noise on a power-of-two lattice before adding them (see ``docs/dp.md``, "Floating point"): the
released value is then an exact lattice point whose low-order bits do not depend on how the data's
floating-point value was rounded, which is what Mironov's (2012) attack reads.
"""

from __future__ import annotations

import math
import os

import numpy as np

_TWO_53 = float(2**53)
# The lattice step is this many binary orders below the magnitude bound of the released value:
# coarse enough to hide floating-point summation error (about 2**-45 relative for n ≤ 1e6),
# fine enough that the rounding's effect on the sensitivity (accounted below) is negligible.
LATTICE_BITS = 40


def lattice_step(magnitude: float) -> float:
    """Power-of-two lattice step for values whose absolute size is at most ``magnitude``."""
    magnitude = max(float(magnitude), 1e-300)
    return math.ldexp(1.0, math.ceil(math.log2(magnitude)) - LATTICE_BITS)


def rounding_slack(magnitude: float, size: int) -> float:
    """Largest L2 change that rounding ``size`` values to the lattice can add to a sensitivity.

    Each coordinate moves by at most half a step, on both neighbouring datasets: one step in
    total per coordinate, so ``step * sqrt(size)`` in L2.
    """
    return lattice_step(magnitude) * math.sqrt(size)


class NoiseSource:
    """Standard-normal draws from the OS CSPRNG (default) or from a seeded numpy generator.

    Parameters
    ----------
    random_state : None, int or numpy.random.Generator
        ``None``: cryptographically secure draws from ``os.urandom``. Anything else: a
        reproducible numpy stream, for tests and benchmarks only (not private).
    """

    def __init__(self, random_state=None) -> None:
        self.secure = random_state is None
        self._rng = None if self.secure else _numpy_rng(random_state)

    def standard_normal(self, shape) -> np.ndarray:
        """Independent N(0, 1) draws of the given shape (float64)."""
        shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        size = int(np.prod(shape, dtype=np.int64))
        if not self.secure:
            return self._rng.standard_normal(size).reshape(shape)
        if size == 0:
            return np.zeros(shape)
        pairs = (size + 1) // 2
        u1 = _secure_uniform(pairs)
        u2 = _secure_uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = (2.0 * np.pi) * u2
        z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
        return z[:size].reshape(shape)

    def gaussian(self, shape, sigma: float) -> np.ndarray:
        """N(0, sigma²) draws of the given shape."""
        return float(sigma) * self.standard_normal(shape)

    def release(self, value, sigma: float, magnitude: float) -> np.ndarray:
        """The Gaussian mechanism on a lattice: round(value) + round(N(0, sigma²)).

        ``magnitude`` is a public bound on ``|value|`` (per coordinate); it fixes the lattice
        step. Callers add :func:`rounding_slack` to the sensitivity they calibrate ``sigma`` for.
        """
        value = np.asarray(value, dtype=np.float64)
        if sigma == 0:
            return value.copy()
        step = lattice_step(magnitude)
        noise = self.gaussian(value.shape, sigma)
        return np.round(value / step) * step + np.round(noise / step) * step


def _secure_uniform(size: int) -> np.ndarray:
    """Uniform draws in the open interval (0, 1) with 53 random bits each, from os.urandom."""
    words = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_53


def _numpy_rng(random_state) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        # legacy generator: derive a Generator from it, deterministically
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise ValueError(
            f"random_state must be None (secure noise), an int seed or a numpy Generator; "
            f"got {random_state!r}"
        )
    return np.random.default_rng(int(random_state))
