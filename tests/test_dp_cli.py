"""`heml train` (heml.dp.cli), run as a subprocess through a tiny argparse harness."""

import json
import subprocess
import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

HARNESS = (
    "import argparse, sys\n"
    "from heml.dp.cli import register\n"
    "p = argparse.ArgumentParser(prog='heml')\n"
    "register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def heml_train(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", HARNESS, "train", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 4))
    df = pd.DataFrame(X, columns=["age", "income", "score", "visits"])
    df.insert(0, "email", [f"user{i}@example.org" for i in range(600)])
    df["label"] = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "people.csv"
    df.to_csv(path, index=False)
    (tmp_path / "models").mkdir()
    return path


def test_train_exports_and_keeps_a_ledger(csv, tmp_path):
    args = [
        csv,
        "--target",
        "label",
        "--epsilon",
        "1",
        "--delta",
        "1e-5",
        "-o",
        "models/people.json",
        "--drop",
        "email",
        "--bounds=-3,3",
        "--budget",
        "1.5",
    ]
    r = heml_train(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "models/people.json").read_text())
    assert model["name"] == "people" and model["task"] == "binary"
    assert model["dp"]["epsilon"] == 1.0 and model["dp"]["neighbouring"] == "replace-one"
    assert model["preprocessing"]["columns"][0]["name"] == "age"
    ledger = json.loads((tmp_path / "models/.heml-privacy-ledger.json").read_text())
    (entry,) = ledger["datasets"].values()
    assert entry["spent_epsilon"] == 1.0 and entry["budget_epsilon"] == 1.5

    # a second run on the same file would exceed the budget: refused, ledger unchanged
    r2 = heml_train(*args, cwd=tmp_path)
    assert r2.returncode == 3
    assert r2.stderr.strip().startswith("heml train: error: privacy budget exceeded")
    assert len(r2.stderr.strip().splitlines()) == 1
    ledger2 = json.loads((tmp_path / "models/.heml-privacy-ledger.json").read_text())
    assert ledger2 == ledger


def test_identifier_column_is_flagged_and_non_numeric_refused(csv, tmp_path):
    r = heml_train(
        csv,
        "--target",
        "label",
        "--epsilon",
        "1",
        "--delta",
        "1e-5",
        "-o",
        "models/m.json",
        "--bounds=-3,3",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "'email' looks like a direct identifier" in r.stderr
    assert "--drop" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "models/.heml-privacy-ledger.json").exists()  # nothing spent


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epsilon", "0"], "epsilon"),
        (["--delta", "0.01"], "not below 1/n"),
        (["--target", "nope"], "not a column"),
        (["--bounds=3,-3"], "LO < HI"),
    ],
)
def test_invalid_runs_exit_2_before_any_spend(csv, tmp_path, extra, message):
    base = {"--target": "label", "--epsilon": "1", "--delta": "1e-5"}
    for flag, value in zip(extra[::2], extra[1::2], strict=False):
        base[flag] = value
    args = [csv, *[x for kv in base.items() for x in kv], "-o", "models/m.json", "--drop", "email"]
    args += [e for e in extra if e.startswith("--bounds")] or ["--bounds=-3,3"]
    r = heml_train(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "models/.heml-privacy-ledger.json").exists()


def test_regression_without_bounds_estimates_them_with_dp(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["price"] = X @ [1.0, 2.0, -1.0] + rng.standard_normal(500)
    df.to_csv(tmp_path / "houses.csv", index=False)
    r = heml_train(
        "houses.csv",
        "--target",
        "price",
        "--epsilon",
        "2",
        "--delta",
        "1e-5",
        "-o",
        "houses.json",
        "--seed",
        "0",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "privacy leak" not in r.stderr  # bounds estimated with DP, inside epsilon
    model = json.loads((tmp_path / "houses.json").read_text())
    assert model["task"] == "regression" and model["dp"]["private"] is True
    assert model["dp"]["bounds"]["X"]["source"].startswith("estimated with DP")
    assert model["dp"]["bounds"]["y"]["source"].startswith("estimated with DP")
    # --bounds data: the data's min and max, and a model that says it is not private
    r = heml_train(
        *["houses.csv", "--target", "price", "--epsilon", "2", "--delta", "1e-5"],
        *["-o", "leaky.json", "--seed", "0", "--bounds", "data", "--target-bounds", "data"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "privacy leak" in r.stderr and "private: false" in r.stderr
    model = json.loads((tmp_path / "leaky.json").read_text())
    assert model["dp"]["private"] is False


def test_per_feature_bounds_from_a_json_file(tmp_path):
    # raw features on very different scales: one LO,HI pair for all would waste the budget
    rng = np.random.default_rng(3)
    n = 2000
    df = pd.DataFrame(
        {
            "income": rng.uniform(20_000, 120_000, n),
            "age": rng.uniform(18, 90, n),
            "ratio": rng.uniform(0, 1, n),
        }
    )
    df["label"] = np.where(
        (df.income - 70_000) / 50_000 + (df.age - 54) / 36 + 2 * (df.ratio - 0.5) > 0, 1, 0
    )
    df.to_csv(tmp_path / "loans.csv", index=False)
    spec = {"income": [0, 150_000], "age": [18, 100], "ratio": [0, 1]}
    (tmp_path / "bounds.json").write_text(json.dumps(spec))
    base = ["loans.csv", "--target", "label", "--epsilon", "2", "--delta", "1e-5", "--seed", "0"]
    r = heml_train(*base, "-o", "loans.json", "--bounds", "bounds.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "privacy leak" not in r.stderr  # the bounds are public, not read from the data
    model = json.loads((tmp_path / "loans.json").read_text())
    assert model["bounds"]["lower"] == [0, 18, 0] and model["bounds"]["upper"] == [150000, 100, 1]

    import heml

    fitted = heml.LinearModel.load(tmp_path / "loans.json")
    accuracy = np.mean(fitted.predict(df[["income", "age", "ratio"]]) == df.label)
    assert accuracy > 0.9, accuracy

    # a file that misses a feature column is refused before any budget is spent
    (tmp_path / "bad.json").write_text(json.dumps({"income": [0, 1], "age": [0, 1]}))
    r = heml_train(*base, "-o", "m2.json", "--bounds", "bad.json", cwd=tmp_path)
    assert r.returncode == 2 and "no bounds for 1 feature column(s): ['ratio']" in r.stderr
    ledger = json.loads((tmp_path / ".heml-privacy-ledger.json").read_text())
    assert [e["spent_epsilon"] for e in ledger["datasets"].values()] == [2.0]


def test_bounds_in_the_wrong_units_warn_on_stderr(tmp_path):
    # issue 15 item 1: raw breast-cancer features with --bounds=-3,3 were silently clipped
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    df = data.frame.rename(columns={"target": "label"})
    df.to_csv(tmp_path / "cancer.csv", index=False)
    base = ["cancer.csv", "--target", "label", "--epsilon", "1", "--delta", "1e-5", "--seed", "0"]
    r = heml_train(*base, "-o", "raw.json", "--bounds=-3,3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "outside the declared bounds" in ln]
    assert len(lines) == 1 and lines[0].startswith("heml train: warning: --bounds:"), r.stderr
    assert "of 30 feature(s)" in lines[0]
    # bounds that cover the data: no warning
    spec = {c: [float(df[c].min()) - 1, float(df[c].max()) + 1] for c in data.feature_names}
    (tmp_path / "b.json").write_text(json.dumps(spec))
    r = heml_train(*base, "-o", "ok.json", "--bounds", "b.json", cwd=tmp_path)
    assert r.returncode == 0 and "outside the declared bounds" not in r.stderr, r.stderr
