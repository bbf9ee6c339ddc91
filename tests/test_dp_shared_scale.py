"""The user's public declaration that all features share one unit (PrivateBounds(shared_scale=
True), ``heml train --shared-scale``): one pooled DP box for all features, whatever the public
rule on n, d, epsilon, delta would pick, recorded in the guarantee (docs/dp.md, "Data bounds")."""

import json

import numpy as np
import pytest
from sklearn.datasets import make_classification

import heml
from heml.dp import DPLinearRegression, DPLogisticRegression, PrivateBounds
from heml.dp import _private_bounds as pb

from .dp_support import fit_rho
from .guard_support import heml_train

SHARED = PrivateBounds(shared_scale=True)


def _mixed_units(n=400):
    """Three features in very different units: the public rule picks per-feature boxes here."""
    X, y = make_classification(
        n_samples=n, n_features=3, n_informative=2, n_redundant=0, random_state=0
    )
    return X * [100.0, 1.0, 0.01] + [50.0, 0.0, 0.0], y


def test_declaration_forces_one_pooled_box_where_the_rule_picks_per_feature():
    X, y = _mixed_units()
    n, d = X.shape
    assert pb.per_feature(n, d, 1.0, 1e-5, False, gaussian=True)  # the rule: per feature
    default = DPLogisticRegression(classes=[0, 1], epsilon=1.0, random_state=0).fit(X, y)
    shared = DPLogisticRegression(classes=[0, 1], epsilon=1.0, bounds_X=SHARED, random_state=0).fit(
        X, y
    )

    # without the declaration: one box per feature, each at its own scale
    gx = default.dp_guarantee_["bounds"]["X"]
    assert gx["pooled"] is False and gx["shared_scale"] is False
    assert default.dp_guarantee_["budget_split"]["bounds"]["feature_releases"] == d
    assert len(set(default.bounds_X_[1].tolist())) == d
    # with it: one box for every feature, released once, and the guarantee says it was declared
    g = shared.dp_guarantee_
    assert g["bounds"]["X"]["pooled"] is True and g["bounds"]["X"]["shared_scale"] is True
    raw_lo, raw_hi = (np.asarray(g["bounds"]["X"][k]) for k in ("lower", "upper"))
    assert np.all(raw_lo == raw_lo[0]) and np.all(raw_hi == raw_hi[0]) and raw_lo[0] < raw_hi[0]
    assert raw_hi[0] >= 100.0  # the shared box follows the largest unit (hundreds)
    b = g["budget_split"]["bounds"]
    assert b["feature_releases"] == 1 and b["epsilon_scale_release"] == 0.0
    # the pooled split: one release gets the features' whole share (no scale release first),
    # up to n·ε_r = BOX_MAX_N_EPSILON (here n = 400: 0.25)
    spread = b["rho_spread_release"] > 0
    expected = pb.split_budget(1.0, 1e-5, 1, gaussian=True, spread=spread, n=n)
    assert n * expected.epsilon_release == pytest.approx(pb.BOX_MAX_N_EPSILON, rel=1e-12)
    assert b["epsilon_per_feature_release"] == pytest.approx(expected.epsilon_release, rel=1e-12)
    assert g["epsilon"] == 1.0 and g["private"] is True
    # the whole fit still converts to (1, 1e-5) and uses all of it
    rho = fit_rho(g)
    assert pb.zcdp_delta(rho, 1.0) <= 1e-5 * (1 + 1e-6)
    assert pb.zcdp_delta(rho * 1.01, 1.0) > 1e-5
    # and a client reads the declaration from the exported model
    dp = heml.export(shared, name="shared").dp
    assert dp["bounds"]["X"]["pooled"] is True and dp["bounds"]["X"]["shared_scale"] is True
    assert dp["budget_split"]["bounds"]["feature_releases"] == 1


@pytest.mark.parametrize("kind", ["regression", "objpert"])
def test_declaration_pools_on_the_other_paths_too(kind):
    X, y = _mixed_units()
    if kind == "regression":
        est = DPLinearRegression(epsilon=1.0, bounds_X=SHARED, random_state=0)
        y = X[:, 0] * 0.5 + 3.0 * X[:, 1]
    else:  # objective perturbation: basic composition of the bounds and the model
        est = DPLogisticRegression(
            classes=[0, 1], epsilon=1.0, method="objpert", bounds_X=SHARED, random_state=0
        )
    g = est.fit(X, y).dp_guarantee_
    assert g["bounds"]["X"]["pooled"] is True and g["bounds"]["X"]["shared_scale"] is True
    assert g["budget_split"]["bounds"]["feature_releases"] == 1
    lo, hi = (np.asarray(g["bounds"]["X"][k]) for k in ("lower", "upper"))
    assert np.all(lo == lo[0]) and np.all(hi == hi[0])
    if kind == "regression":  # the target keeps its own release
        assert g["budget_split"]["bounds"]["epsilon_target_release"] > 0
        assert "DP" in g["bounds"]["y"]["source"]


def test_without_the_declaration_the_fit_is_what_it_was():
    X, y = _mixed_units()
    fits = [
        DPLogisticRegression(classes=[0, 1], epsilon=1.0, bounds_X=b, random_state=0).fit(X, y)
        for b in (None, PrivateBounds(), PrivateBounds(shared_scale=False))
    ]
    for f in fits[1:]:  # the same seeded fit, bit for bit
        np.testing.assert_array_equal(f.coef_, fits[0].coef_)
        np.testing.assert_array_equal(f.bounds_X_[0], fits[0].bounds_X_[0])
        assert f.dp_guarantee_["bounds"]["X"]["shared_scale"] is False
    # pinned from the code before the declaration existed (main at b42a792, same seeds); the
    # coefficients re-pinned in round 5, when every Gaussian multiplier got CALIBRATION_MARGIN
    # (1 + 1e-9): they moved by 2e-8 relative (b42a792: -0.00043133055560165166,
    # 7.096451471869731, 38.21957787510927; intercept -0.982872938692412); the boxes did not
    lo, hi = fits[0].bounds_X_
    np.testing.assert_allclose(hi, [345.26698300124394, 2.6973983046972183, 0.014901161193847656])
    np.testing.assert_allclose(lo, -hi)
    np.testing.assert_allclose(
        fits[0].coef_, [[-0.0004313305460879099, 7.096451474633303, 38.21957793465628]], rtol=1e-9
    )
    np.testing.assert_allclose(fits[0].intercept_, [-0.9828729398160378], rtol=1e-9)


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.True_, 1.0])
def test_shared_scale_must_be_a_bool(value):
    with pytest.raises(ValueError, match="shared_scale must be True or False"):
        PrivateBounds(shared_scale=value)
    assert PrivateBounds(shared_scale=True).shared_scale is True


# ------------------------------------------------------------------ heml train --shared-scale
_train = heml_train


@pytest.fixture
def pixels_csv(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # a ledger of its own
    X, y = _mixed_units(400)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["label"] = np.where(y == 1, "yes", "no")
    df.to_csv(tmp_path / "data.csv", index=False)
    return tmp_path / "data.csv"


def test_cli_shared_scale_trains_one_pooled_box_and_says_so(pixels_csv, tmp_path):
    base = [pixels_csv, "--target", "label", "--classes", "no,yes", "--epsilon", "1"]
    base += ["--delta", "1e-5", "--seed", "0"]
    r = _train(*base, "-o", "shared.json", "--shared-scale", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    x = json.loads((tmp_path / "shared.json").read_text())["dp"]["bounds"]["X"]
    assert x["pooled"] is True and x["shared_scale"] is True
    assert len(set(x["lower"])) == 1 and len(set(x["upper"])) == 1
    r = _train(*base, "-o", "plain.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    x = json.loads((tmp_path / "plain.json").read_text())["dp"]["bounds"]["X"]
    assert x["pooled"] is False and x["shared_scale"] is False


@pytest.mark.parametrize("bounds", ["--bounds=-3,3", "--bounds=data"])
def test_cli_shared_scale_with_bounds_is_one_line_error_before_any_spend(
    pixels_csv, tmp_path, bounds
):
    r = _train(
        *[pixels_csv, "--target", "label", "--classes", "no,yes", "--epsilon", "1"],
        *["--delta", "1e-5", "-o", "m.json", "--shared-scale", bounds],
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--shared-scale and --bounds" in r.stderr, r.stderr
    assert not (tmp_path / "m.json").exists()
    assert not (tmp_path / "xdg").exists()  # nothing charged: the ledger was never written
