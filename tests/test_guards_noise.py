"""The noise source's promises at their edges (issue 18; docs/dp.md, "Noise" and "Floating point").

* Secure draws: 53-bit uniforms in (0, 1] (the word's top 53 bits plus one half, over 2^53;
  the largest word rounds to 1.0), so Box-Muller never takes log(0) or the log of more than
  1: the extreme words give finite normals of known value.
* Releases: round(value) + round(N(0, σ²)) on the lattice of step 2^(⌈log2 magnitude⌉ - 40);
  the rounding adds at most step·√size to the L2 sensitivity.
* Seeded sources (tests only) are reproducible; anything else than None, an int or a numpy
  generator is refused.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import _noise
from heml.dp._noise import NoiseSource, lattice_step, rounding_slack


def _zero_then_max():
    """os.urandom stand-in: the first call (the radii's words) gives zeros, later ones
    (the angles' words) all ones."""
    calls = []

    def urandom(size: int) -> bytes:
        calls.append(size)
        return (b"\0" if len(calls) == 1 else b"\xff") * size

    return urandom


def test_the_extreme_words_give_uniforms_strictly_inside_0_1(monkeypatch):
    monkeypatch.setattr(_noise.os, "urandom", _zero_then_max())
    z = NoiseSource(None).standard_normal(2)
    u1 = 0.5 / 2.0**53
    # the largest word: (2^53 - 1 + 0.5) rounds to 2^53 in float64, so u = 1.0 exactly
    # (probability 2^-53; the docstring's "open interval" is off by this one word)
    u2 = (2.0**53 - 1 + 0.5) / 2.0**53
    r = math.sqrt(-2.0 * math.log(u1))
    expected = [r * math.cos(2.0 * math.pi * u2), r * math.sin(2.0 * math.pi * u2)]
    assert np.all(np.isfinite(z))
    assert z.tolist() == pytest.approx(expected, rel=1e-12)
    # the largest word as a radius: u ≤ 1, so the radius is real (here 0), never NaN
    monkeypatch.setattr(_noise.os, "urandom", lambda size: b"\xff" * size)
    z = NoiseSource(None).standard_normal(2)
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 1e-7


def test_an_empty_shape_gives_an_empty_array_of_that_shape():
    for source in (NoiseSource(None), NoiseSource(0)):
        assert source.standard_normal((0, 3)).shape == (0, 3)
        assert source.standard_normal(0).shape == (0,)


@pytest.mark.parametrize("magnitude", [1e-3, 0.75, 1.0, 10.0, 3e6])
def test_the_lattice_step_is_2_to_the_magnitudes_order_minus_40(magnitude):
    step = lattice_step(magnitude)
    assert step == 2.0 ** (math.ceil(math.log2(magnitude)) - 40)
    assert rounding_slack(magnitude, 9) == pytest.approx(3 * step, rel=1e-15)
    assert rounding_slack(magnitude, 1) == step


def test_a_release_adds_the_lattice_rounded_noise_to_the_lattice_rounded_value():
    value = np.array([0.1234567891234, -3.3, 7.0])
    sigma, magnitude = 0.7, 10.0
    step = 2.0 ** (math.ceil(math.log2(magnitude)) - 40)
    z = NoiseSource(42).standard_normal(3)
    out = NoiseSource(42).release(value, sigma, magnitude)
    expected = np.round(value / step) * step + np.round(sigma * z / step) * step
    assert np.array_equal(out, expected)
    assert not np.array_equal(
        out, np.round(value / step) * step - np.round(sigma * z / step) * step
    )


def test_a_noiseless_release_of_integer_counts_is_float():
    out = NoiseSource(None).release([3, 4], 0, 10.0)
    assert out.dtype == np.float64 and out.tolist() == [3.0, 4.0]


def test_seeded_sources_are_reproducible_and_other_seeds_refused():
    assert np.array_equal(NoiseSource(7).standard_normal(4), NoiseSource(7).standard_normal(4))
    a = NoiseSource(np.random.RandomState(7)).standard_normal(4)
    b = NoiseSource(np.random.RandomState(7)).standard_normal(4)
    assert np.array_equal(a, b)
    g = np.random.default_rng(3)
    assert NoiseSource(g)._rng is g
    for bad in (True, 1.5, "7"):
        with pytest.raises(ValueError, match=r"random_state must be None \(secure noise\)"):
            NoiseSource(bad)


def test_the_exponential_mechanisms_draw_inverts_the_cdf_of_os_urandom(monkeypatch):
    """_draw picks candidate i with probability p_i / Σp: the uniform (from os.urandom when
    the source is secure) times Σp is located in the cumulative weights."""
    from heml.dp._private_bounds import _draw, _uniform

    weights, cands = np.array([1.0, 1.0, 2.0]), np.array([10.0, 20.0, 30.0])

    def word(w: int):
        return lambda size: w.to_bytes(8, "little") * (size // 8)

    secure = NoiseSource(None)
    for w, want in [(0, 10.0), (int(0.3 * 2**64), 20.0), (int(0.6 * 2**64), 30.0),
                    (2**64 - 1, 30.0)]:  # fmt: skip
        monkeypatch.setattr(_noise.os, "urandom", word(w))
        assert _uniform(secure) == ((w >> 11) + 0.5) / 2.0**53
        assert _draw(weights, cands, secure) == want
