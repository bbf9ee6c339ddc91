"""Declared bounds (and ``data_norm``) that a fit cannot use are refused before the budget is
reserved: by the estimators before their accountant spends, and by ``heml train`` before its
ledger does. Until this change they were parsed after the reservation, so a reversed pair, a
NaN, a wrong length or a bound beyond ±1e100 cost the fit's (ε, δ) (docs/dp.md: bad input
costs nothing). Each refusal is checked beside a valid fit with the same accountant or ledger,
which does spend, so that "nothing spent" cannot come from a fit that never spends."""

import json

import numpy as np
import pytest

from heml.dp import BudgetAccountant, DPLinearRegression, DPLogisticRegression

from .guard_support import heml_train

pd = pytest.importorskip("pandas")

RNG = np.random.default_rng(7)
X = RNG.standard_normal((200, 3))
Y_CLASS = (X[:, 0] > 0).astype(int)
Y_REG = X @ np.array([1.0, -0.5, 0.25])

BAD_X = [
    pytest.param({"bounds_X": (1.0, -1.0)}, "above upper", id="reversed"),
    pytest.param({"bounds_X": (-1.0, float("nan"))}, "finite", id="nan"),
    pytest.param({"bounds_X": ([-1.0, -1.0], [1.0, 1.0])}, "one value per feature", id="length"),
    pytest.param({"bounds_X": (-1e101, 1.0)}, "within", id="beyond-1e100"),
    pytest.param({"bounds_X": "xy"}, "bounds must be", id="unknown-kind"),
    pytest.param({"bounds_X": ("a", "b")}, "bounds_X must hold", id="not-numbers"),
    pytest.param({"bounds_X": (-1.0, 1.0), "data_norm": -1.0}, "data_norm", id="data-norm"),
]


def _estimator(kind: str, accountant, **params):
    if kind == "classifier":
        return DPLogisticRegression(classes=[0, 1], accountant=accountant, random_state=0, **params)
    params.setdefault("bounds_y", (-3.0, 3.0))
    return DPLinearRegression(accountant=accountant, random_state=0, **params)


def _fit(est):
    return est.fit(X, Y_CLASS if isinstance(est, DPLogisticRegression) else Y_REG)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("params, message", BAD_X)
def test_unusable_feature_bounds_are_refused_before_the_spend(kind, params, message):
    accountant = BudgetAccountant(epsilon=10.0, delta=1e-3)
    with pytest.raises(ValueError, match=message):
        _fit(_estimator(kind, accountant, **params))
    assert accountant.spent == (0.0, 0.0)
    assert accountant.ledger == []
    # the same accountant pays for a usable fit: the refusal above is what spent nothing
    _fit(_estimator(kind, accountant, bounds_X=(-3.0, 3.0)))
    assert accountant.spent == (1.0, 1e-5)


@pytest.mark.parametrize("bounds_X", [(-3.0, 3.0), None], ids=["declared-X", "estimated-X"])
@pytest.mark.parametrize("bounds_y", [(2.0, 1.0), (0.0, float("inf")), (-1e101, 0.0)])
def test_unusable_target_bounds_are_refused_before_the_spend(bounds_X, bounds_y):
    accountant = BudgetAccountant(epsilon=10.0, delta=1e-3)
    with pytest.raises(ValueError, match="bounds_y"):
        _fit(_estimator("regressor", accountant, bounds_X=bounds_X, bounds_y=bounds_y))
    assert accountant.spent == (0.0, 0.0)
    _fit(_estimator("regressor", accountant, bounds_X=bounds_X, bounds_y=(-3.0, 3.0)))
    assert accountant.spent == (1.0, 1e-5)


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["label"] = Y_CLASS
    df.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path


def _train(tmp_path, bounds: str):
    return heml_train(
        "t.csv", "--target", "label", "--classes", "0,1", "--epsilon", "1", "--delta", "1e-5",
        "-o", "m.json", f"--bounds={bounds}", cwd=tmp_path,
    )  # fmt: skip


def test_heml_train_refuses_bounds_beyond_1e100_before_the_ledger(table):
    ledger = table / "xdg" / "heml" / "privacy-ledger.json"
    (table / "wide.json").write_text(json.dumps({"a": [-1, 1], "b": [-1e300, 1e300], "c": [0, 1]}))
    for bounds in ("-1e101,1", "wide.json"):
        r = _train(table, bounds)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "heml train: error: --bounds must lie within"
        )
        assert not ledger.exists()  # nothing reserved, nothing charged
        assert not (table / "m.json").exists()
    r = _train(table, "-3,3")  # the same run with usable bounds is charged
    assert r.returncode == 0, r.stderr
    spends = json.loads(ledger.read_text())["datasets"]
    assert [s["status"] for d in spends.values() for s in d["spends"]] == ["ok"]


def test_heml_train_refuses_target_bounds_beyond_1e100_before_the_ledger(table):
    ledger = table / "xdg" / "heml" / "privacy-ledger.json"
    pd.DataFrame({"a": X[:, 0], "y": Y_REG}).to_csv(table / "r.csv", index=False)
    r = heml_train(
        "r.csv", "--target", "y", "--task", "regression", "--epsilon", "1", "--delta", "1e-5",
        "-o", "r.json", "--bounds=-3,3", "--target-bounds=-1e101,1", cwd=table,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heml train: error: --target-bounds must lie")
    assert not ledger.exists()
