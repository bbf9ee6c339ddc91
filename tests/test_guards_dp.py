"""The DP promises at their source: where the noise comes from, how much of it, and the budget.

Written from docs/dp.md, not from the code: the noise is os.urandom -> 53-bit uniforms ->
Box-Muller and nothing else; DP gradient descent adds N(0, σ²) with σ calibrated to the
replace-one sensitivity 2C over its T steps; a privacy ledger keeps enforcing the budget it
stored. Each test fails when its guard is weakened (issue 18; docs/testing.md).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from heml.dp import BudgetAccountant, DPLinearRegression, DPLogisticRegression

from .guard_support import child_env


class FakeUrandom:
    """A deterministic stand-in for os.urandom: one byte stream (SHA-256 in counter mode over
    a label) handed out in order, however it is split into calls."""

    def __init__(self, label: bytes) -> None:
        self.label, self.counter, self.calls = label, 0, 0
        self.buffer = b""

    def __call__(self, size: int) -> bytes:
        self.calls += 1
        while len(self.buffer) < size:
            block = hashlib.sha256(self.label + self.counter.to_bytes(8, "little")).digest()
            self.buffer += block
            self.counter += 1
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


# ----------------------------------------------------------------------------- noise source
def _box_muller_reference(stream: bytes, size: int) -> list[float]:
    """docs/dp.md: 8 bytes -> a 53-bit uniform in (0, 1) -> Box-Muller. The first call draws
    the radii's uniforms, the second the angles'; cosines first, then sines."""
    pairs = (size + 1) // 2
    words = struct.unpack(f"<{2 * pairs}Q", stream[: 16 * pairs])
    u = [((w >> 11) + 0.5) / 2.0**53 for w in words]
    u1, u2 = u[:pairs], u[pairs:]
    r = [math.sqrt(-2.0 * math.log(a)) for a in u1]
    z = [ri * math.cos(2.0 * math.pi * b) for ri, b in zip(r, u2, strict=True)]
    z += [ri * math.sin(2.0 * math.pi * b) for ri, b in zip(r, u2, strict=True)]
    return z[:size]


def test_secure_noise_is_exactly_box_muller_of_os_urandom(monkeypatch):
    from heml.dp._noise import NoiseSource

    for size in (1, 6, 7):
        fake = FakeUrandom(b"draws")
        monkeypatch.setattr(os, "urandom", fake)
        np.random.seed(size)  # the legacy global generator must not matter
        z = NoiseSource(None).standard_normal(size)
        expected = _box_muller_reference(FakeUrandom(b"draws")(16 * ((size + 1) // 2)), size)
        np.testing.assert_allclose(z, expected, rtol=1e-13, atol=1e-15)
        assert fake.calls >= 1


def _fits(label: bytes, numpy_seed: int, monkeypatch):
    """A DP linear and a DP logistic fit whose only randomness should be os.urandom."""
    monkeypatch.setattr(os, "urandom", FakeUrandom(label))
    np.random.seed(numpy_seed)  # legacy global generator
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(400, 3))
    y_reg = X @ np.array([0.5, -0.25, 0.1]) + 0.05 * rng.standard_normal(400)
    y_cls = (X[:, 0] - X[:, 1] > 0).astype(int)
    acc = BudgetAccountant()
    lin = DPLinearRegression(epsilon=1.0, bounds_X=(-1, 1), bounds_y=(-1, 1), accountant=acc)
    log = DPLogisticRegression(epsilon=1.0, classes=[0, 1], bounds_X=(-1, 1), accountant=acc)
    lin.fit(X, y_reg)
    log.fit(X, y_cls)
    return np.r_[lin.coef_.ravel(), lin.intercept_], np.r_[log.coef_.ravel(), log.intercept_]


def test_estimators_draw_their_noise_from_os_urandom_only(monkeypatch):
    """Same OS bytes -> the same models, whatever numpy's global seed; other OS bytes -> other
    models (so the noise really comes from os.urandom, and from nothing else)."""
    lin1, log1 = _fits(b"A", 1, monkeypatch)
    lin2, log2 = _fits(b"A", 2, monkeypatch)
    lin3, log3 = _fits(b"B", 1, monkeypatch)
    np.testing.assert_array_equal(lin1, lin2)
    np.testing.assert_array_equal(log1, log2)
    assert np.abs(lin1 - lin3).max() > 1e-6  # the noise changed with the bytes
    assert np.abs(log1 - log3).max() > 1e-6


# ----------------------------------------------------------------------------- DP-GD calibration
def _gaussian_delta(eps: float, mu: float) -> float:
    """Exact δ(ε) of the Gaussian mechanism with sensitivity/σ = mu (Balle & Wang 2018)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def _multiplier(eps: float, delta: float, releases: int) -> float:
    """σ/Δ for `releases` Gaussian releases composed to exactly (ε, δ): they compose into one
    Gaussian with μ = √T / multiplier (Dong, Roth & Su 2019)."""
    mu = brentq(lambda m: _gaussian_delta(eps, m) - delta, 1e-6, 50.0, xtol=1e-14)
    return math.sqrt(releases) / mu


def _softmax_fit(n: int, d: int, eps: float, seed):
    rng = np.random.default_rng(7)
    X = rng.uniform(-1, 1, size=(n, d))
    y = np.arange(n) % 3  # three classes, all present
    kwargs = (
        {"classes": [0, 1, 2]}
        if "classes" in inspect.signature(DPLogisticRegression).parameters
        else {}
    )
    clf = DPLogisticRegression(
        epsilon=eps,
        delta=1e-5,
        bounds_X=(-1.0, 1.0),
        data_norm=math.inf,
        random_state=seed,
        accountant=BudgetAccountant(),
        **kwargs,
    )
    return clf.fit(X, y)


def test_dpgd_sigma_is_the_replace_one_calibration():
    """docs/dp.md: per-example gradients clipped to C = 0.5; each of T steps adds N(0, σ²) to the
    summed gradient, Δ = 2C under replace-one; T = clip(round(ν²/8), 5, 200) with
    ν = n/(m·√(k(d+1))), m the single-release multiplier; the T releases compose to (ε, δ)."""
    C, n, d, k, eps, delta = 0.5, 180, 4, 3, 1.0, 1e-5
    clf = _softmax_fit(n, d, eps, seed=None)
    m1 = _multiplier(eps, delta, 1)
    nu = n / (m1 * math.sqrt(k * (d + 1)))
    T = int(min(max(round(nu * nu / 8), 5), 200))
    assert 5 < T < 100  # the rule, not its clip, picked T here (and the last iterate)
    sigma = _multiplier(eps, delta, T) * 2 * C
    recorded = clf.dp_guarantee_["hyperparameters"]
    assert recorded["steps"] == T
    assert recorded["sigma"] == pytest.approx(sigma, rel=1e-6)


def test_dpgd_adds_noise_of_the_documented_sigma_to_the_model():
    """The noise in the released weights has the calibrated σ: with few samples and many
    features the model is almost all noise, W = -(2/n)·Σ_t (G_t + N_t), so each of its k·d
    coordinates (in the normalized row space, a = x/√(R² + κ²), κ = R/2) is N(0, T·(2σ/n)²)."""
    C, n, d, k, eps, delta = 0.5, 40, 300, 3, 0.5, 1e-5
    clf = _softmax_fit(n, d, eps, seed=11)
    assert clf.coef_.shape == (k, d)
    T = clf.dp_guarantee_["hyperparameters"]["steps"]
    sigma = _multiplier(eps, delta, T) * 2 * C
    R = math.sqrt(d)  # L2 radius of the box [-1, 1]^d; no row clip (data_norm=inf)
    scale = math.sqrt(R**2 + (R / 2) ** 2)
    W = clf.coef_ * scale  # (k, d) in the normalized row space
    measured = float(np.sqrt(np.mean(W**2))) * n / (2.0 * math.sqrt(T))
    # gradient signal adds at most T·n·C in Frobenius norm: < 2 % of the noise here
    assert measured == pytest.approx(sigma, rel=0.12)


# ----------------------------------------------------------------------------- ledger
def _train(tmp_path, csv, *extra):
    cmd = [sys.executable, "-m", "heml", "train", str(csv), "--target", "y", "--task",
           "regression", "--delta", "1e-5", "--bounds=-1,1", "--target-bounds=-2,2",
           "--ledger", str(tmp_path / "ledger.json"), *map(str, extra)]  # fmt: skip
    return subprocess.run(
        cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=180
    )


def test_a_ledger_budget_holds_for_runs_that_do_not_repeat_it(tmp_path):
    """`--budget` is stored with the dataset; a later run without it is held to it."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(300, 2))
    rows = ["a,b,y"] + [f"{a:.6f},{b:.6f},{a - b:.6f}" for a, b in X]
    csv = tmp_path / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    ledger = tmp_path / "ledger.json"

    first = _train(tmp_path, csv, "--epsilon", 1, "--budget", 1.5, "-o", tmp_path / "m1.json")
    assert first.returncode == 0, first.stderr
    # over the stored budget (1 + 1 > 1.5), no --budget given: refused, nothing recorded
    before = json.loads(ledger.read_text())
    second = _train(tmp_path, csv, "--epsilon", 1, "-o", tmp_path / "m2.json")
    assert second.returncode == 3, second.stderr
    assert "budget" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m2.json").exists()
    assert json.loads(ledger.read_text()) == before
    # positive control: a spend that fits the stored budget (1 + 0.4 ≤ 1.5) still runs
    third = _train(tmp_path, csv, "--epsilon", 0.4, "-o", tmp_path / "m3.json")
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "m3.json").exists()
