"""Findings of the adversarial review of round 5 (DP-GD regression; bad input before the
spend), each with a test that fails on the code before its fix and, where the finding was a
leak, a positive control that shows the leak with the guard bypassed.

1. A row bound or target half width below 1e-100 (data_norm = 1e-170): its square underflowed
   to 0, AdaSSP's sensitivities became 0 and its release carried no noise; DP-GD divided by 0
   after the spend. Now refused before the spend (MIN_SCALE).
2. ``heml train --bounds FILE.json``: the public map divided before clipping, so one record at
   1e308 overflowed to inf and failed the run after the ledger spend, while its neighbour's
   run succeeded. Now clipped first; per-column half widths below 1e-100 are refused.
3. ε above ~1e200 failed in dp-accounting after the spend, and estimated bounds at 1e12 failed
   with a root-finder's message: finite ε is capped at 1e6.
4. ``--classes`` that type to duplicates or NaN, ``--seed -1``, ``-o`` a folder: refused after
   the ledger spend; now before.
5. ``bounds_X`` as a one-shot iterator: consumed by the pre-spend check, refused after.
6. ``np.seterr(all="raise")``: one subnormal record made the fit raise after the spend.
"""

import argparse
import json

import numpy as np
import pytest

from heml.dp import BudgetAccountant, DPLinearRegression, DPLogisticRegression, _validation

pd = pytest.importorskip("pandas")

RNG = np.random.default_rng(11)
X = RNG.standard_normal((200, 3))
Y = X @ np.array([1.0, -0.5, 0.25]) + 0.1 * RNG.standard_normal(200)
LABELS = (X[:, 0] > 0).astype(int)


def _fit(est, X=X):
    y = LABELS if isinstance(est, DPLogisticRegression) else Y
    return est.fit(X, y)


def _reg(**kw):
    kw.setdefault("bounds_X", (-3.0, 3.0))
    kw.setdefault("bounds_y", (-3.0, 3.0))
    return DPLinearRegression(**kw)


# ---------------------------------------------------------------------- 1. tiny scales
@pytest.mark.parametrize("method", ["auto", "adassp"])
@pytest.mark.parametrize(
    "params",
    [{"data_norm": 1e-170}, {"bounds_X": (-1e-170, 1e-170), "data_norm": np.inf},
     {"bounds_y": (0.0, 1e-170)}],
    ids=["data_norm", "bounds_X", "bounds_y"],
)  # fmt: skip
def test_scales_whose_square_underflows_are_refused_before_the_spend(method, params):
    acc = BudgetAccountant(epsilon=10.0, delta=1e-3)
    with pytest.raises(ValueError, match="below 1e-100"):
        _fit(_reg(method=method, accountant=acc, **params))
    assert acc.spent == (0.0, 0.0)
    for name in ("data_norm", "bounds_X"):  # the classifier's row bound too
        if name in params:
            with pytest.raises(ValueError, match="below 1e-100"):
                _fit(DPLogisticRegression(classes=[0, 1], accountant=acc, **params))
    assert acc.spent == (0.0, 0.0)


def test_adassp_without_the_scale_check_releases_a_noiseless_model(monkeypatch):
    # positive control for 1: with the check bypassed, AdaSSP at data_norm = 1e-170 gives the
    # same coefficients for every noise seed (its sensitivities underflowed to 0): the release
    # is a deterministic function of the data, while at data_norm = 1e-100 (accepted) it is not
    monkeypatch.setattr(_validation, "_check_scale", lambda value, what: None)

    def spread(norm):  # across noise seeds, relative to the coefficient
        c = [float(_fit(_reg(method="adassp", data_norm=norm, random_state=s)).coef_[0])
             for s in range(4)]  # fmt: skip
        return (max(c) - min(c)) / abs(np.mean(c))

    assert spread(1e-170) < 1e-12  # only rounding: no noise reached the release
    assert spread(_validation.MIN_SCALE) > 1e-3


@pytest.mark.parametrize("method", ["auto", "adassp"])
def test_the_smallest_accepted_scale_fits_with_noise(method):
    acc = BudgetAccountant()
    fits = [
        _fit(_reg(method=method, data_norm=_validation.MIN_SCALE, random_state=s, accountant=acc))
        for s in range(3)
    ]
    assert all(np.all(np.isfinite(f.coef_)) for f in fits)
    assert len({float(f.coef_[0]) for f in fits}) == 3


# ---------------------------------------------------------------------- 3. huge epsilon
def test_finite_epsilon_above_1e6_is_refused_before_the_spend():
    acc = BudgetAccountant()
    for est in (_reg(epsilon=1.01e6, accountant=acc), DPLogisticRegression(
            epsilon=1.01e6, classes=[0, 1], bounds_X=(-3, 3), accountant=acc)):  # fmt: skip
        with pytest.raises(ValueError, match="1e\\+06\\] or inf"):
            _fit(est)
    assert acc.spent == (0.0, 0.0)
    # the cap itself fits (declared bounds; the zCDP path with estimated bounds too)
    for est in (_reg(epsilon=1e6, random_state=0), _reg(epsilon=1e6, bounds_X=None,
            bounds_y=None, random_state=0), DPLogisticRegression(
            epsilon=1e6, classes=[0, 1], bounds_X=(-3, 3), random_state=0)):  # fmt: skip
        assert np.all(np.isfinite(_fit(est).coef_))


# ---------------------------------------------------------------------- 5. iterators
def test_bounds_given_as_an_iterator_are_refused_before_the_spend():
    acc = BudgetAccountant(epsilon=10.0, delta=1e-3)
    with pytest.raises(ValueError, match="bounds_X must be a \\(lower, upper\\) pair"):
        _fit(_reg(bounds_X=iter([-3.0, 3.0]), accountant=acc))
    with pytest.raises(ValueError, match="bounds_y must be a \\(lower, upper\\) pair"):
        _fit(_reg(bounds_y=iter([-3.0, 3.0]), accountant=acc))
    assert acc.spent == (0.0, 0.0)
    _fit(_reg(bounds_X=[-3.0, 3.0], bounds_y=np.array([-3.0, 3.0]), accountant=acc))
    assert acc.spent == (1.0, 1e-5)  # lists and arrays still work


# ---------------------------------------------------------------------- 6. np.seterr
@pytest.mark.parametrize(
    "make",
    [lambda: _reg(random_state=0), lambda: _reg(bounds_X=None, bounds_y=None, random_state=0),
     lambda: DPLogisticRegression(classes=[0, 1], bounds_X=(-3, 3), random_state=0)],
    ids=["declared", "estimated", "classifier"],
)  # fmt: skip
def test_a_subnormal_record_fits_under_seterr_raise(make):
    Xs = X.copy()
    Xs[0, 0] = 5e-324
    with np.errstate(all="raise"):
        est = _fit(make(), Xs)
        assert np.all(np.isfinite(est.coef_))
        # positive control: the undecorated fit raises on that record
        with pytest.raises(FloatingPointError):
            type(est).fit.__wrapped__(make(), Xs, LABELS if "Logistic" in type(est).__name__ else Y)


# ---------------------------------------------------------------------- 2, 4. heml train
def _train(tmp_path, monkeypatch, *args):
    from heml.dp.cli import register

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser(prog="heml")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["train", *map(str, args)])
    return a.func(a)


def _ledger(tmp_path):
    path = tmp_path / "xdg" / "heml" / "privacy-ledger.json"
    if not path.exists():
        return []
    return [s["status"] for d in json.loads(path.read_text())["datasets"].values()
            for s in d["spends"]]  # fmt: skip


def _table(tmp_path, x0: float, name="t.csv"):
    df = pd.DataFrame(np.clip(X, -0.99, 0.99) / 2 + 0.5, columns=["a", "b", "c"])
    df.loc[0, "a"] = x0
    df["y"] = LABELS
    df.to_csv(tmp_path / name, index=False)


def test_one_huge_record_cannot_fail_a_run_with_per_column_bounds(tmp_path, monkeypatch):
    (tmp_path / "b.json").write_text(json.dumps({"a": [0, 1], "b": [0, 1], "c": [0, 1]}))
    for x0, name in ((0.5, "in.csv"), (1e308, "out.csv")):  # neighbours: one record differs
        _table(tmp_path, x0, name)
        code = _train(tmp_path, monkeypatch, name, "--target", "y", "--classes", "0,1",
                      "--epsilon", "1", "--delta", "1e-5", "-o", f"{name}.json",
                      "--bounds", "b.json", "--seed", "0")  # fmt: skip
        assert code == 0
    assert _ledger(tmp_path) == ["ok", "ok"]
    # positive control: the map without the clip overflows on that record
    from heml.dp._public_scaling import bounds_map, normalize

    center, half = bounds_map(np.zeros(3), np.ones(3))
    with np.errstate(over="ignore"):
        assert np.isinf(
            normalize(np.array([[1e308, 0.5, 0.5]]), center * 0 - 1e308, half / 4)
        ).any()


@pytest.mark.parametrize(
    "args, message",
    [(["--classes", "0,00,1"], "--classes has duplicate labels"),
     (["--classes", "0,1,nan"], "--classes must be finite"),
     (["--classes", "0,1", "--seed", "-1"], "--seed:"),
     (["--classes", "0,1", "-o", "folder.json"], "is a folder"),
     (["--classes", "0,1", "--bounds", "tiny.json"], "half width is below 1e-100"),
     (["--classes", "0,1", "--epsilon", "1e200"], "1e+06] or inf")],
    ids=["duplicate", "nan", "seed", "folder", "tiny-width", "epsilon"],
)  # fmt: skip
def test_heml_train_refuses_public_mistakes_before_the_ledger(tmp_path, monkeypatch, capsys,
                                                              args, message):  # fmt: skip
    _table(tmp_path, 0.5)
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "tiny.json").write_text(json.dumps({"a": [0, 1e-170], "b": [0, 1], "c": [0, 1]}))
    base = ["t.csv", "--target", "y", "--delta", "1e-5", "--epsilon", "1", "-o", "m.json"]
    if "--epsilon" in args:
        base = base[:5] + base[7:]
    if "-o" in args:
        base = base[:-2]
    code = _train(tmp_path, monkeypatch, *base, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert _ledger(tmp_path) == []  # nothing reserved, nothing charged


# ---------------------------------------------------------------------- second review
# 7. ε = δ = 1e-20: dp-accounting's multiplier stops growing near 5e15, so the release was
#    6e3 times δ; now ε >= 1e-3 and δ >= 1e-30. 8. At ρ ~ 4e-14 the zCDP root's absolute
#    tolerance exceeded its 1e-9 margin: the fit was refused after the spend; now relative.
# 9. bounds_y="data" with a target at 1e200 (or spanning 1e-150) was refused by the inner fit
#    after the spend, quoting the data's min and max.
@pytest.mark.parametrize(
    "eps, delta, message",
    [(9.9e-4, 1e-5, "epsilon must be in"), (1e-20, 1e-20, "epsilon must be in"),
     (1.0, 9.9e-31, "delta must be in"), (1.0, 5e-324, "delta must be in")],
)  # fmt: skip
def test_epsilon_and_delta_floors_are_refused_before_the_spend(eps, delta, message):
    acc = BudgetAccountant()
    for est in (_reg(epsilon=eps, delta=delta, accountant=acc), DPLogisticRegression(
            epsilon=eps, delta=delta, classes=[0, 1], bounds_X=(-3, 3), method="objpert",
            accountant=acc)):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _fit(est)
    assert acc.spent == (0.0, 0.0)


def test_gaussian_calibration_is_broken_below_the_floors():
    # positive control for the floors: at ε = δ = 1e-20 dp-accounting's multiplier is far too
    # small (exact δ of a Gaussian at that multiplier, in 60-digit arithmetic)
    import dp_accounting
    import mpmath

    mpmath.mp.dps = 60

    def exact_delta(m, eps):
        m, eps = mpmath.mpf(m), mpmath.mpf(eps)
        return mpmath.ncdf(-eps * m + 1 / (2 * m)) - mpmath.e**eps * mpmath.ncdf(
            -eps * m - 1 / (2 * m)
        )

    assert exact_delta(dp_accounting.get_sigma_gaussian(1e-20, 1e-20), 1e-20) > 1e3 * 1e-20
    from heml.dp._calibration import CALIBRATION_MARGIN

    worst = 0.0
    for eps, delta in ((1e-3, 1e-30), (1e-3, 1e-12), (1e-3, 1e-5), (1.0, 1e-30), (1e6, 1e-30)):
        m = dp_accounting.get_sigma_gaussian(eps, delta)
        worst = max(worst, float(exact_delta(m, eps) / delta))
        assert exact_delta(m * CALIBRATION_MARGIN, eps) <= delta  # heml's multiplier
    assert worst > 1.0  # dp-accounting's own multiplier alone over-claims somewhere


@pytest.mark.parametrize("make", [
    lambda e, d: _reg(epsilon=e, delta=d, bounds_X=None, bounds_y=None, random_state=0),
    lambda e, d: DPLogisticRegression(epsilon=e, delta=d, classes=[0, 1], random_state=0),
    lambda e, d: DPLogisticRegression(epsilon=e, delta=d, classes=[0, 1], bounds_X=(-3, 3),
                                      method="objpert", random_state=0),
], ids=["regression-estimated", "classifier-estimated", "objpert"])  # fmt: skip
@pytest.mark.parametrize("eps, delta", [(1e-3, 1e-30), (1e-3, 1e-8), (1e6, 1e-30)])
def test_the_floors_and_the_cap_fit_without_failing_after_the_spend(make, eps, delta):
    est = make(eps, delta)
    acc = BudgetAccountant()
    est.set_params(accountant=acc)
    if eps == 1e-3 and est.bounds_X is None:
        # estimated bounds: the model's share would be below the floor: refused before the spend
        with pytest.raises(ValueError, match="below the 0.001 a fit accepts"):
            _fit(est)
        assert acc.spent == (0.0, 0.0)
        est.set_params(epsilon=3e-3)  # enough for the model's share: the fit runs
    assert np.all(np.isfinite(_fit(est).coef_))


def test_zcdp_rho_converts_back_within_delta_at_tiny_rho():
    import math

    from scipy.optimize import brentq

    from heml.dp import _private_bounds as pb

    for eps, delta in ((1e-3, 1e-30), (1e-3, 1e-8), (1e-6, 1e-8)):
        rho = pb.zcdp_rho(eps, delta)
        assert pb.zcdp_delta(rho, eps) <= delta
    # positive control: the old absolute tolerance at ε = 1e-6, δ = 1e-8 (ρ ~ 4e-14)
    f = lambda r: math.log(max(pb.zcdp_delta(r, 1e-6), 1e-320)) - math.log(1e-8)  # noqa: E731
    old = brentq(f, 1e-15, 1e-6, xtol=1e-18, rtol=1e-12) * (1.0 - 1e-9)
    assert pb.zcdp_delta(old, 1e-6) > 1e-8


@pytest.mark.parametrize("spike", [1e200, -1e200])
def test_data_bounds_opt_in_survives_one_extreme_target(spike):
    from heml.dp import PrivacyLeakWarning

    y = Y.copy()
    y[0] = spike
    acc = BudgetAccountant()
    with pytest.warns(PrivacyLeakWarning):
        est = DPLinearRegression(bounds_X=(-3, 3), bounds_y="data", accountant=acc,
                                 random_state=0).fit(X, y)  # fmt: skip
    assert est.dp_guarantee_["private"] is False and acc.spent[0] == 1.0
    assert max(abs(b) for b in est.bounds_y_) <= 1e100


def test_data_bounds_opt_in_survives_a_tiny_target():
    from heml.dp import PrivacyLeakWarning

    y = np.zeros(len(Y))
    y[0] = 1e-150
    with pytest.warns(PrivacyLeakWarning):
        est = DPLinearRegression(bounds_X=(-3, 3), bounds_y="data", random_state=0,
                                 accountant=BudgetAccountant()).fit(X, y)  # fmt: skip
    lo, hi = est.bounds_y_
    assert (hi - lo) / 2 >= _validation.MIN_SCALE * (1 - 1e-12)


# ---------------------------------------------------------------------- exact edges (mutants)
def _refused_before_the_spend(match, **params):
    acc = BudgetAccountant(epsilon=10.0, delta=1e-3)
    with pytest.raises(ValueError, match=match):
        _fit(_reg(accountant=acc, **params))
    assert acc.spent == (0.0, 0.0)


def test_scale_messages_name_what_is_too_small():
    _refused_before_the_spend(
        "^the row bound of bounds_X and data_norm is 1e-170, below 1e-100: the mechanisms "
        "square it, which underflows; express the data in larger units$",
        bounds_X=(-3.0, 3.0), data_norm=1e-170,
    )  # fmt: skip
    _refused_before_the_spend(
        "^the half width of bounds_y is 1e-170, below 1e-100: the mechanisms square it, which "
        "underflows; express the data in larger units$",
        bounds_y=(-1e-170, 1e-170),
    )  # fmt: skip


def test_the_target_half_width_floor_is_exact():
    _refused_before_the_spend("half width of bounds_y", bounds_y=(0.0, 1.9e-100))
    _refused_before_the_spend("half width of bounds_y", bounds_y=(-0.95e-100, 0.95e-100))
    est = _fit(_reg(bounds_y=(0.0, 2e-100), random_state=0, accountant=BudgetAccountant()))
    assert np.all(np.isfinite(est.coef_))
    # a per-feature-looking target pair is one value too many for the one target
    _refused_before_the_spend("one value per feature", bounds_y=([0.0, 0.0], [1.0, 1.0]))


def test_the_row_bound_floor_is_exact_and_centred_like_the_mechanisms():
    # no row clip (data_norm = inf): the row bound is measured around the box's middle, so a
    # box 1e-105 wide far from 0 is too small though its corners are at 1e-90
    _refused_before_the_spend("row bound", bounds_X=(1e-90, 1e-90 + 1e-105), data_norm=np.inf)
    _refused_before_the_spend("row bound", bounds_X=(-1e-90 - 1e-105, -1e-90), data_norm=np.inf)
    # with the row clip the bound is around 0 and the clip's own value counts
    est = _fit(_reg(bounds_X=(1e-90, 2e-90), random_state=0, accountant=BudgetAccountant()))
    assert np.all(np.isfinite(est.coef_))
    norm = 1e-100 / np.sqrt(3)  # √3 coordinates: the implied box's row bound is exactly 1e-100
    assert np.isfinite(_fit(_reg(bounds_X=(-1.0, 1.0), data_norm=1.01e-100)).coef_).all()
    _refused_before_the_spend("row bound", bounds_X=(-1.0, 1.0), data_norm=0.99e-100)
    assert norm < 1e-100


def test_the_box_implied_by_data_norm_is_checked_too():
    _refused_before_the_spend("row bound", bounds_X=None, data_norm=1e-170)
    est = _fit(_reg(bounds_X=None, data_norm=2.0, random_state=0, accountant=BudgetAccountant()))
    assert est.dp_guarantee_["bounds"]["X"]["source"] == "implied by data_norm"
    _refused_before_the_spend("^data_norm must be a positive number or None", bounds_X=None,
                              data_norm="abc")  # fmt: skip


def test_the_exact_fit_clips_rows_at_a_third_of_the_datas_box():
    # ε = inf with the bounds read from the data: the row clip is a third of the L2 radius of
    # the box around 0 (the declared path's rule)
    Xs = X * np.array([1.0, 2.0, 3.0])
    est = _fit(_reg(epsilon=np.inf, bounds_X=None, bounds_y=None), Xs)
    radius = np.linalg.norm(np.maximum(np.abs(Xs.min(0)), np.abs(Xs.max(0))))
    assert est.data_norm_ == pytest.approx(radius / 3, rel=1e-12)


def test_every_gaussian_multiplier_carries_the_calibration_margin_upward():
    # σ = dp-accounting's multiplier × CALIBRATION_MARGIN, never ÷ (the margin must add noise)
    import dp_accounting

    from heml.dp import _calibration as cal

    gsg, margin = dp_accounting.get_sigma_gaussian, cal.CALIBRATION_MARGIN
    assert margin > 1.0
    got = cal._objpert_sigma(0.7, 1e-5, 1e-7)
    assert got == max(2.0 * gsg(0.7, 1e-5) * margin, gsg(0.7, 1e-7) * margin)
    got = cal._objpert_sigma(0.7, 1e-5, 1e-30)  # the side term is the larger one here
    assert got == gsg(0.7, 1e-30) * margin > 2.0 * gsg(0.7, 1e-5) * margin
    amp = cal.calibrate_amp(1.0, 1e-5, 0.25, lambda s: 1.0, 0.5, epsilon_share=0.1,
                            delta_share=0.01)  # fmt: skip
    assert amp.residual_multiplier == gsg(0.1, 1e-7) * margin


def test_the_plan_floor_message_names_the_declared_bounds():
    with pytest.raises(ValueError) as info:
        _fit(_reg(epsilon=1e-3, bounds_X=None, bounds_y=None))
    assert str(info.value).endswith(
        "below the 0.001 a fit accepts; raise epsilon or declare bounds_X (and bounds_y)"
    )


def test_with_the_row_clip_the_row_bound_is_measured_around_0():
    # a box 1e-105 wide at 1e-90 with the default row clip: rows are clipped around 0, so the
    # bound is min(|box| around 0, the clip) ~ 6e-91: accepted (around the box's middle it
    # would be 9e-106 and refused)
    est = _fit(_reg(bounds_X=(1e-90, 1e-90 + 1e-105), random_state=0,
                    accountant=BudgetAccountant()))  # fmt: skip
    assert np.all(np.isfinite(est.coef_)) and est.data_norm_ is not None


def test_the_exact_fit_with_data_bounds_keeps_a_declared_row_clip():
    # ε = inf with the data's bounds: the declared row clip is kept (the "data" path of
    # resolve_feature_bounds), whatever the box's own default would be
    est = DPLinearRegression(epsilon=np.inf, bounds_X="data", bounds_y="data",
                             data_norm=0.5).fit(X, Y)  # fmt: skip
    assert est.data_norm_ == 0.5


def test_the_scale_check_is_for_declared_or_implied_boxes_only():
    # ε = inf with the data's bounds: no noise and no declared box, so a tiny data_norm is not
    # refused (only a declared or data_norm-implied box has its row bound checked)
    est = DPLinearRegression(epsilon=np.inf, bounds_X="data", bounds_y="data",
                             data_norm=1e-170).fit(X, Y)  # fmt: skip
    assert est.data_norm_ == 1e-170
