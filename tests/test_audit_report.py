"""heml.audit.audit end to end: leakage found where it exists, DP claims checked, the report."""

import json
import math

import numpy as np
import pytest
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split

import heml
from heml.audit import AuditReport, NoisySumClassifier, audit

from .audit_support import UnderstatedNoisySum

INF = math.inf


@pytest.fixture(scope="module")
def overfit_data():
    """n = 150 training records, d = 100 features: a non-private model memorises."""
    X, y = make_classification(n_samples=300, n_features=100, n_informative=10, random_state=0)
    X /= np.linalg.norm(X, axis=1).max()  # rows in the unit ball (NoisySumClassifier's clip)
    return train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)


def overfit_or_noisy(eps):
    if math.isinf(eps):  # weak regularisation: memorises the training set
        return LogisticRegression(C=100.0, solver="newton-cholesky", max_iter=1000)
    return NoisySumClassifier(epsilon=eps, delta=1e-5, classes=(0, 1))  # a public label set


@pytest.fixture(scope="module")
def overfit_report(overfit_data):
    Xtr, Xte, ytr, yte = overfit_data
    return audit(
        overfit_or_noisy,
        Xtr,
        ytr,
        Xte,
        yte,
        epsilons=(1.0, INF),
        n_shadow=16,
        canary_runs=100,
        n_bootstrap=100,
        progress=False,
    )


def test_overfit_non_private_model_leaks(overfit_report):
    m = overfit_report.model(INF)
    assert not m.private and m.audit_status == "not private"
    assert m.canary["epsilon_lb"] > 2.0
    online = m.attacks["lira_online"]
    assert online["tpr_at_fpr"][0.01] > 0.03  # chance is 0.01
    assert online["tpr_at_fpr_ci"][0.01][0] > 0.01  # and the interval excludes chance
    assert online["auc"] > m.attacks["threshold"]["auc"] + 0.05
    assert online["auc_ci"][0] > 0.6
    # the most exposed records stand far above what shuffled membership labels produce
    assert m.vulnerable[0]["effect_size"] > 2 * m.vulnerable_null_max_effect
    assert m.vulnerable[0]["auc"] > 0.9
    assert all(0 <= r["train_index"] < 150 for r in m.vulnerable)


def test_non_private_leak_survives_data_randomness(overfit_data):
    """With a fixed training set a deterministic fit is trivially distinguishable; resampling
    the other records every run shows the canary itself is what separates the worlds."""
    Xtr, Xte, ytr, yte = overfit_data
    report = audit(
        overfit_or_noisy,
        Xtr,
        ytr,
        Xte,
        yte,
        epsilons=(INF,),
        n_shadow=4,
        canary_runs=100,
        canary_subsample=0.5,
        n_bootstrap=0,
        progress=False,
    )
    c = report.models[0].canary
    assert c["epsilon_lb"] > 2.0
    assert math.isfinite(c["effect_size"]) and c["effect_size"] > 3.0


def test_dp_model_at_epsilon_1_stays_below_its_claim(overfit_report):
    m = overfit_report.model(1.0)
    assert m.private and m.claimed_epsilon == 1.0 and m.claimed_delta == 1e-5
    assert m.canary["epsilon_lb"] <= 1.0
    assert m.audit_status == "passed"
    assert m.attacks["lira_online"]["auc"] < 0.56
    assert overfit_report.passed is True
    # its ROC respects the DP limit at the 1 % FPR point, up to sampling error
    for met in m.attacks.values():
        assert met["tpr_at_fpr"][0.01] <= math.e * 0.01 + 1e-5 + 0.02


def test_heml_dp_logistic_regression_at_epsilon_1_stays_below_its_claim(overfit_data):
    dp = pytest.importorskip("heml.dp")
    Xtr, Xte, ytr, yte = overfit_data
    report = audit(
        lambda e: dp.DPLogisticRegression(
            epsilon=e, delta=1e-5, classes=[0, 1], bounds_X=(-1.0, 1.0)
        ),
        Xtr,
        ytr,
        Xte,
        yte,
        epsilons=(1.0,),
        n_shadow=8,
        canary_runs=150,
        release_canaries=False,  # the margin canary; the class list: test_audit_release.py
        n_bootstrap=0,
        progress=False,
    )
    m = report.models[0]
    assert m.claim_source == "dp_guarantee_"
    assert m.claimed_epsilon == 1.0
    assert m.canary["epsilon_lb"] <= 1.0
    assert report.passed is True


def test_audit_runs_do_not_spend_the_callers_default_budget(overfit_data):
    dp = pytest.importorskip("heml.dp")
    Xtr, Xte, ytr, yte = overfit_data
    with dp.BudgetAccountant(epsilon=2.0, delta=1e-3) as budget:
        report = audit(
            lambda e: dp.DPLogisticRegression(
                epsilon=e, delta=1e-5, classes=[0, 1], bounds_X=(-1.0, 1.0)
            ),
            Xtr, ytr, Xte, yte,
            epsilons=(1.0,), n_shadow=4, canary_runs=10, release_canaries=False,
            n_bootstrap=0, progress=False,
        )  # fmt: skip
        assert budget.spent == (0.0, 0.0)  # 26 fits at ε=1 would have exceeded ε=2
        dp.DPLogisticRegression(epsilon=1.0, classes=[0, 1], bounds_X=(-1.0, 1.0)).fit(Xtr, ytr)
        assert budget.spent[0] == pytest.approx(1.0)  # fits outside the audit still spend
    assert report.models[0].claimed_epsilon == 1.0


def test_a_mechanism_that_understates_epsilon_fails_the_audit(overfit_data):
    Xtr, Xte, ytr, yte = overfit_data
    report = audit(
        lambda e: UnderstatedNoisySum(epsilon=e, classes=(0, 1)),
        Xtr,
        ytr,
        Xte,
        yte,
        epsilons=(0.5,),
        n_shadow=4,
        canary_runs=200,
        n_bootstrap=0,
        progress=False,
    )
    m = report.models[0]
    assert m.claimed_epsilon == 0.5
    assert m.canary["epsilon_lb"] > 0.5
    assert m.audit_status == "FAILED"
    assert report.passed is False
    assert report.summary["failed_models"] == ["ε=0.5"]
    assert "**FAILED**" in report.to_markdown()


def test_parallel_runs_reproduce_the_sequential_audit(overfit_data):
    Xtr, Xte, ytr, yte = overfit_data
    kwargs = dict(epsilons=(1.0,), n_shadow=4, canary_runs=40, n_bootstrap=0, progress=False)
    a = audit(overfit_or_noisy, Xtr, ytr, Xte, yte, n_jobs=1, **kwargs)
    b = audit(overfit_or_noisy, Xtr, ytr, Xte, yte, n_jobs=2, **kwargs)
    assert a.models[0].canary == b.models[0].canary
    assert a.models[0].attacks == b.models[0].attacks
    c = audit(overfit_or_noisy, Xtr, ytr, Xte, yte, random_state=1, **kwargs)
    assert c.models[0].canary != a.models[0].canary


# ---------------------------------------------------------------------- the report
def test_report_json_round_trip_and_strictness(overfit_report, tmp_path):
    path = overfit_report.save(tmp_path / "audit.json")
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    data = json.loads(text)
    assert data["schema"] == "heml.audit-report" and data["schema_version"] == 1
    assert data["models"][1]["claimed_epsilon"] == "inf"
    assert set(data["threat_model"]) >= {"adversary", "dp_covers", "dp_does_not_cover"}
    loaded = AuditReport.load(path)
    assert loaded.summary == overfit_report.summary
    assert loaded.models[1].claimed_epsilon == INF
    assert loaded.models[0].attacks["lira_online"]["tpr_at_fpr"][0.01] == pytest.approx(
        overfit_report.models[0].attacks["lira_online"]["tpr_at_fpr"][0.01]
    )
    with pytest.raises(ValueError, match="not a heml audit report"):
        AuditReport.from_dict({"schema": "something else"})


def test_summary_and_markdown(overfit_report):
    s = overfit_report.summary
    assert [m["label"] for m in s["models"]] == ["ε=1", "non-private (ε=∞)"]
    priv, nonpriv = s["models"]
    assert priv["claimed_epsilon"] == 1.0 and nonpriv["claimed_epsilon"] is None
    assert priv["audit"] == "passed" and nonpriv["audit"] == "not private"
    assert priv["advantage_dp_bound"] == pytest.approx(0.462, abs=1e-3)
    # headline = the strongest attack per metric
    m = overfit_report.model(INF)
    assert nonpriv["auc"] == max(a["auc"] for a in m.attacks.values())
    md = overfit_report.to_markdown(figures={"ROC": "roc.png"})
    assert "| ε=1 | 1 (δ=1e-05) |" in md
    assert "## Threat model" in md and "black-box client" in md
    assert "![ROC](roc.png)" in md


def test_plots_are_written(overfit_report, tmp_path):
    pytest.importorskip("matplotlib")
    for method, name in (
        (overfit_report.plot, "a.png"),
        (overfit_report.plot_roc, "b.png"),
        (overfit_report.plot_privacy_utility, "c.png"),
    ):
        path = method(tmp_path / name)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_attach_sets_a_json_summary_on_a_linear_model(overfit_report, overfit_data, tmp_path):
    Xtr, _, ytr, _ = overfit_data
    model = heml.export(
        LogisticRegression(C=100.0, solver="newton-cholesky").fit(Xtr, ytr),
        name="overfit",
        bounds=(-1.0, 1.0),
    )
    assert not model.is_private
    overfit_report.attach(model)
    a = model.audit
    assert a["claimed_epsilon"] is None and a["audit"] == "not private"
    assert a["epsilon_lower_bound"] == overfit_report.model(INF).canary["epsilon_lb"]
    assert set(a) >= {"auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "date", "claimed_epsilon"}
    loaded = heml.LinearModel.load(model.save(tmp_path / "m.json"))
    assert loaded.audit == a
    # an explicit ε picks another entry; an ε that was not audited is an error
    overfit_report.attach(model, epsilon=1.0)
    assert model.audit["claimed_epsilon"] == 1.0
    with pytest.raises(KeyError, match="no audited model at ε=3"):
        overfit_report.attach(model, epsilon=3.0)


# ---------------------------------------------------------------------- other tasks, inputs
def test_multiclass_with_string_labels():
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    Xtr, Xte, ytr, yte = train_test_split(X, labels, test_size=0.3, random_state=0, stratify=y)
    report = audit(
        lambda e: LogisticRegression(max_iter=1000),
        Xtr, ytr, Xte, yte,
        epsilons=(INF,), n_shadow=4, canary_runs=20, n_bootstrap=0, progress=False,
    )  # fmt: skip
    m = report.models[0]
    assert report.data["classes"] == ["setosa", "versicolor", "virginica"]
    assert m.utility_metric == "accuracy" and m.utility_test > 0.85
    assert m.canary["canary"]["y"] in report.data["classes"]


def test_regression():
    X, y = make_regression(n_samples=120, n_features=40, noise=5.0, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=0)
    report = audit(
        lambda e: Ridge(alpha=1e-3),
        Xtr, ytr, Xte, yte,
        epsilons=(INF,), n_shadow=16, canary_runs=40, n_bootstrap=0, progress=False,
    )  # fmt: skip
    m = report.models[0]
    assert report.data["task"] == "regression" and m.utility_metric == "r2"
    assert m.attacks["lira_online"]["auc"] > 0.6  # 60 records, 40 features: memorised
    assert m.canary["epsilon_lb"] > 1.0


def test_input_validation(overfit_data):
    Xtr, Xte, ytr, yte = overfit_data
    with pytest.raises(ValueError, match="features"):
        audit(overfit_or_noisy, Xtr, ytr, Xte[:, :5], yte, progress=False)
    with pytest.raises(ValueError, match="ε must be > 0"):
        audit(overfit_or_noisy, Xtr, ytr, Xte, yte, epsilons=(0.0,), progress=False)
    with pytest.raises(ValueError, match="duplicates"):
        audit(overfit_or_noisy, Xtr, ytr, Xte, yte, epsilons=(1, 1.0), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        bad = Xtr.copy()
        bad[0, 0] = np.nan
        audit(overfit_or_noisy, bad, ytr, Xte, yte, progress=False)
    with pytest.raises(ValueError, match="n_shadow"):
        audit(overfit_or_noisy, Xtr, ytr, Xte, yte, n_shadow=1, progress=False)
    with pytest.raises(RuntimeError, match=r"make_estimator\(1.0\) failed"):
        audit(lambda e: 1 / 0, Xtr, ytr, Xte, yte, epsilons=(1.0,), progress=False)
