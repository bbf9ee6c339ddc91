"""`heml train` (heml.dp.cli), run as a subprocess through a tiny argparse harness."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from .guard_support import HARNESS, heml_train  # noqa: E402


@pytest.fixture(autouse=True)
def ledger_file(tmp_path, monkeypatch):
    """Each test gets its own per-user ledger (XDG_DATA_HOME, inherited by subprocesses)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "heml" / "privacy-ledger.json"


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


def test_train_exports_and_keeps_a_ledger(csv, tmp_path, ledger_file):
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
        "--classes",
        "no,yes",
    ]
    r = heml_train(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "models/people.json").read_text())
    assert model["name"] == "people" and model["task"] == "binary"
    assert model["dp"]["epsilon"] == 1.0 and model["dp"]["neighbouring"] == "replace-one"
    assert model["preprocessing"]["columns"][0]["name"] == "age"
    ledger = json.loads(ledger_file.read_text())
    (entry,) = ledger["datasets"].values()
    assert entry["spent_epsilon"] == 1.0 and entry["budget_epsilon"] == 1.5
    assert [s["status"] for s in entry["spends"]] == ["ok"]
    assert not (tmp_path / "models/.heml-privacy-ledger.json").exists()  # one ledger per user

    # a second run on the same file would exceed the budget: refused, ledger unchanged
    r2 = heml_train(*args, cwd=tmp_path)
    assert r2.returncode == 3
    assert r2.stderr.strip().startswith("heml train: error: privacy budget refused")
    assert len(r2.stderr.strip().splitlines()) == 1
    assert json.loads(ledger_file.read_text()) == ledger

    # writing the model to another folder is the same budget (the ledger is per user)
    (tmp_path / "elsewhere").mkdir()
    r3 = heml_train(
        *[a if a != "models/people.json" else "elsewhere/p.json" for a in args], cwd=tmp_path
    )
    assert r3.returncode == 3, r3.stderr
    assert json.loads(ledger_file.read_text()) == ledger


def test_identifier_column_is_flagged_and_non_numeric_refused(csv, tmp_path, ledger_file):
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
        "--classes",
        "no,yes",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "'email' looks like a direct identifier" in r.stderr
    assert "--drop" in r.stderr.splitlines()[-1]
    assert not ledger_file.exists()  # nothing spent


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epsilon", "0"], "epsilon"),
        (["--delta", "0.01"], "not below 1/n"),
        (["--target", "nope"], "not a column"),
        (["--bounds=3,-3"], "LO < HI"),
    ],
)
def test_invalid_runs_exit_2_before_any_spend(csv, tmp_path, extra, message, ledger_file):
    base = {"--target": "label", "--epsilon": "1", "--delta": "1e-5"}
    for flag, value in zip(extra[::2], extra[1::2], strict=False):
        base[flag] = value
    args = [csv, *[x for kv in base.items() for x in kv], "-o", "models/m.json", "--drop", "email"]
    args += ["--classes", "no,yes"]
    args += [e for e in extra if e.startswith("--bounds")] or ["--bounds=-3,3"]
    r = heml_train(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not ledger_file.exists()


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
        "--task",
        "regression",
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
        *["houses.csv", "--target", "price", "--task", "regression", "--epsilon", "2"],
        *["--delta", "1e-5", "-o", "leaky.json", "--seed", "0"],
        *["--bounds", "data", "--target-bounds", "data"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "privacy leak" in r.stderr and "private: false" in r.stderr
    model = json.loads((tmp_path / "leaky.json").read_text())
    assert model["dp"]["private"] is False


def test_per_feature_bounds_from_a_json_file(tmp_path, ledger_file):
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
    base += ["--classes", "0,1"]
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
    ledger = json.loads(ledger_file.read_text())
    assert [e["spent_epsilon"] for e in ledger["datasets"].values()] == [2.0]


# ------------------------------------------------------------------ task and classes: declared
def _ints_csv(tmp_path, rare: int | None):
    """A target of small integers (the old auto-detection called it classification) whose
    last row may carry a rare label."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["y"] = (X[:, 0] > 0).astype(int)
    if rare is not None:
        df.loc[399, "y"] = rare
    path = tmp_path / f"ints{rare}.csv"
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------- the privacy ledger
def train_here(*args, capsys=None) -> tuple[int, str]:
    """`heml train` in this process (faster than a subprocess); returns (exit code, stderr)."""
    from heml.dp.cli import main

    code = main(["train", *map(str, args)])
    return code, capsys.readouterr().err if capsys is not None else ""


@pytest.fixture
def houses(tmp_path):
    """A small regression table and the public-bounds arguments every run below shares."""
    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (400, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["price"] = X @ [1.0, 2.0, -1.0] + 0.1 * rng.standard_normal(400)
    df.to_csv(tmp_path / "houses.csv", index=False)
    base = ["--target", "price", "--task", "regression", "--bounds=-1,1"]
    base += ["--target-bounds=-5,5", "--delta", "1e-5", "--seed", "0"]
    return tmp_path / "houses.csv", base, df


def test_stored_budget_is_enforced_and_raising_it_needs_a_flag(
    houses, tmp_path, ledger_file, capsys
):
    data, base, _ = houses
    out = ["-o", tmp_path / "m.json"]
    assert train_here(data, *base, *out, "--epsilon", "0.5", "--budget", "1.5") == (0, "")
    # no --budget: the stored 1.5 still holds (0.5 + 1.2 > 1.5)
    code, err = train_here(data, *base, *out, "--epsilon", "1.2", capsys=capsys)
    assert code == 3 and "privacy budget refused" in err and "remaining()" not in err, err
    # a higher --budget is refused without --raise-budget, and nothing is recorded
    before = ledger_file.read_text()
    code, err = train_here(data, *base, *out, "--epsilon", "1.2", "--budget", "5", capsys=capsys)
    assert code == 3 and "--raise-budget" in err and len(err.strip().splitlines()) == 1, err
    assert ledger_file.read_text() == before
    # with the flag the raise is stored, and later runs enforce the new budget
    code, _ = train_here(data, *base, *out, "--epsilon", "1.2", "--budget", "2", "--raise-budget")
    assert code == 0
    entry = next(iter(json.loads(ledger_file.read_text())["datasets"].values()))
    assert entry["budget_epsilon"] == 2.0 and entry["spent_epsilon"] == pytest.approx(1.7)
    code, err = train_here(data, *base, *out, "--epsilon", "0.5", capsys=capsys)
    assert code == 3, err
    # lowering needs no flag; below what was spent, every further run is refused
    code, err = train_here(data, *base, *out, "--epsilon", "0.1", "--budget", "1", capsys=capsys)
    assert code == 3 and "has spent" in err, err
    code, _ = train_here(data, *base, *out, "--epsilon", "0.2", "--budget", "1.9")
    assert code == 0
    entry = next(iter(json.loads(ledger_file.read_text())["datasets"].values()))
    assert entry["budget_epsilon"] == 1.9


def test_a_shuffled_copy_is_the_same_dataset(houses, tmp_path, ledger_file, capsys):
    data, base, df = houses
    out = ["-o", tmp_path / "m.json"]
    assert train_here(data, *base, *out, "--epsilon", "1", "--budget", "1")[0] == 0
    # rows shuffled, columns reordered, numbers written differently: same records
    shuffled = df.sample(frac=1.0, random_state=1)[["c", "price", "a", "b"]]
    shuffled.to_csv(tmp_path / "copy.csv", index=False, float_format="%.17g")
    code, err = train_here(tmp_path / "copy.csv", *base, *out, "--epsilon", "1", capsys=capsys)
    assert code == 3 and "privacy budget refused" in err and "remaining()" not in err, err
    # positive control: one record changed is another dataset with its own budget
    edited = shuffled.copy()
    edited.iloc[0, 0] += 0.5
    edited.to_csv(tmp_path / "edited.csv", index=False)
    assert train_here(tmp_path / "edited.csv", *base, *out, "--epsilon", "1")[0] == 0
    assert len(json.loads(ledger_file.read_text())["datasets"]) == 2
    # a declared id joins files whatever their content
    args = [*base, *out, "--epsilon", "1", "--dataset-id", "houses-2026"]
    assert train_here(tmp_path / "edited.csv", *args, "--budget", "1.5")[0] == 0
    code, err = train_here(data, *args, capsys=capsys)
    assert code == 3 and "privacy budget refused" in err and "remaining()" not in err, err
    assert "id:houses-2026" in json.loads(ledger_file.read_text())["datasets"]


def test_table_fingerprint_ignores_order_and_names_but_not_values():
    from heml.dp._ledger import table_fingerprint

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((50, 3)), columns=["x", "y", "z"])
    df["n"] = rng.integers(0, 5, 50)
    df["s"] = rng.choice(["red", "blue"], 50)
    df["p"], df["q"] = np.arange(50) % 2, rng.permutation(np.arange(50) % 2)  # tied columns
    fp = table_fingerprint(df)
    perm = df.sample(frac=1.0, random_state=3)[["q", "s", "z", "n", "x", "p", "y"]]
    assert table_fingerprint(perm) == fp
    assert table_fingerprint(perm.set_axis(list("abcdefg"), axis=1)) == fp
    assert table_fingerprint(df.assign(n=df.n.astype(float))) == fp  # 1 and 1.0 are equal
    changed = df.copy()
    changed.loc[7, "s"] = "green"
    assert table_fingerprint(changed) != fp
    assert table_fingerprint(df.iloc[1:]) != fp
    assert table_fingerprint(pd.concat([df, df.iloc[:1]])) != fp  # a duplicated record counts
    assert table_fingerprint(df.drop(columns="z")) != fp
    swapped = df.copy()
    swapped.loc[0, "x"], swapped.loc[1, "x"] = df.loc[1, "x"], df.loc[0, "x"]
    assert table_fingerprint(swapped) != fp  # same column values, other records


def test_delta_is_budgeted_by_default_and_on_request(houses, tmp_path, ledger_file, capsys):
    data, base, _ = houses
    base = [b for b in base if b not in ("--delta", "1e-5")]
    out = ["-o", tmp_path / "m.json"]
    # default total delta is 1/n = 1/400: one fit at 2e-3 fits, a second does not
    assert train_here(data, *base, *out, "--epsilon", "1", "--delta", "2e-3")[0] == 0
    code, err = train_here(data, *base, *out, "--epsilon", "1", "--delta", "2e-3", capsys=capsys)
    assert code == 3 and "delta" in err, err
    entry = next(iter(json.loads(ledger_file.read_text())["datasets"].values()))
    assert entry["budget_delta"] == pytest.approx(1 / 400) and "budget_epsilon" not in entry
    # an explicit, smaller delta budget on another dataset id
    args = [*base, *out, "--epsilon", "0.1", "--delta", "1e-5", "--dataset-id", "d2"]
    assert train_here(data, *args, "--budget-delta", "1.5e-5")[0] == 0
    code, err = train_here(data, *args, capsys=capsys)
    assert code == 3 and "delta" in err, err
    code, err = train_here(data, *args, "--budget-delta", "1e-3", capsys=capsys)
    assert code == 3 and "--raise-budget" in err, err
    assert train_here(data, *args, "--budget-delta", "1e-3", "--raise-budget")[0] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--task is required"),
        (["--task", "classification"], "--classes is required"),
        (["--task", "regression", "--classes", "0,1"], "--classes is for classification"),
        (["--classes", "0"], "at least two labels"),
        (["--classes", "0,1,0"], "duplicate"),
        (["--classes", "0,1"], "not in --classes"),  # the data's row with label 2
    ],
)
def test_task_and_classes_come_from_the_declared_schema(tmp_path, ledger_file, extra, message):
    path = _ints_csv(tmp_path, rare=2)
    base = [path, "--target", "y", "--epsilon", "1", "--delta", "1e-5", "--bounds=-3,3"]
    r = heml_train(*base, "-o", "m.json", *extra, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not ledger_file.exists()  # nothing spent


def test_a_rare_label_does_not_change_the_trained_model_kind(tmp_path):
    # before, `heml train` inferred the task and the classes from the target: one record with
    # label 2 turned a binary model (objective perturbation) into a 3-class one (DP-GD).
    # With --classes both neighbours give a model of the same kind and label set.
    kinds = []
    for rare in (None, 2):
        path = _ints_csv(tmp_path, rare)
        out = f"m{rare}.json"
        args = [path, "--target", "y", "--epsilon", "1", "--delta", "1e-5", "--bounds=-3,3"]
        r = heml_train(*args, "--classes", "0,1,2", "--seed", "0", "-o", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        model = json.loads((tmp_path / out).read_text())
        hyper = model["dp"]["hyperparameters"]
        kinds.append((model["task"], model["classes"], hyper["method"], hyper["steps"]))
    assert kinds[0] == kinds[1] and kinds[0][0] == "multiclass"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget-delta", "0"], "--budget-delta"),
        (["--budget-delta", "1.5"], "--budget-delta"),
        (["--raise-budget"], "--raise-budget needs"),
        (["--dataset-id", " "], "--dataset-id"),
    ],
)
def test_bad_ledger_arguments_exit_2(houses, tmp_path, ledger_file, capsys, extra, message):
    data, base, _ = houses
    code, err = train_here(
        data, *base, "-o", tmp_path / "m.json", "--epsilon", "1", *extra, capsys=capsys
    )
    assert code == 2 and message in err, err
    assert not ledger_file.exists()


def test_a_failed_fit_is_still_charged(houses, tmp_path, ledger_file, capsys, monkeypatch):
    # the solver fails after the data were used: the docs say the budget is charged
    import heml.dp._logistic as lg

    # "auto" runs DP-GD for two classes (round 2 of issue 12): the real mechanism runs on
    # the data, then a failure is forced (DP-GD has no convergence test of its own)
    real = lg._dp_gradient_descent

    def no_convergence(*a, **k):
        real(*a, **k)
        raise lg.ConvergenceError("forced after the data were used")

    monkeypatch.setattr(lg, "_dp_gradient_descent", no_convergence)
    _, _, df = houses
    df.assign(label=(df.price > 0).astype(int)).drop(columns="price").to_csv(
        tmp_path / "labels.csv", index=False
    )
    args = ["--target", "label", "--task", "classification", "--bounds=-1,1", "--delta", "1e-5"]
    args += [*_classes_args(), "-o", tmp_path / "m.json", "--epsilon", "1", "--budget", "1.5"]
    code, err = train_here(tmp_path / "labels.csv", *args, capsys=capsys)
    assert code == 1 and "ConvergenceError" in err, err
    assert not (tmp_path / "m.json").exists()
    entry = next(iter(json.loads(ledger_file.read_text())["datasets"].values()))
    assert entry["spent_epsilon"] == 1.0
    assert [s["status"] for s in entry["spends"]] == ["failed: ConvergenceError"]
    # and the charge counts: the next run does not fit the budget
    monkeypatch.setattr(lg, "_dp_gradient_descent", real)
    code, err = train_here(tmp_path / "labels.csv", *args, capsys=capsys)
    assert code == 3, err


def test_a_failed_export_is_still_charged(houses, tmp_path, ledger_file, capsys, monkeypatch):
    import heml.dp._public_scaling as public_scaling

    data, base, _ = houses

    def disk_full(*a, **k):  # the model cannot be written: after the fit read the data
        raise OSError(28, "No space left on device")

    # (an output path that is a folder is refused before the ledger now: test_dp_review5.py)
    monkeypatch.setattr(public_scaling, "export_fitted", disk_full)
    code, err = train_here(data, *base, "-o", tmp_path / "m.json", "--epsilon", "1", capsys=capsys)
    assert code == 1, err
    entry = next(iter(json.loads(ledger_file.read_text())["datasets"].values()))
    assert entry["spent_epsilon"] == 1.0 and entry["spends"][0]["status"].startswith("failed")


def _classes_args() -> list[str]:
    """`--classes 0,1` where this heml train has that option (public label set)."""
    import argparse

    from heml.dp.cli import register

    parser = register(argparse.ArgumentParser().add_subparsers())
    return ["--classes", "0,1"] if "--classes" in parser._option_string_actions else []


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_check_and_reserve_happen_under_the_ledger_lock(houses, tmp_path, ledger_file):
    """A concurrent run cannot pass a check that only one run fits: while another process
    holds the ledger lock, heml train waits, then sees that process's spend and is refused."""
    from heml.dp import _ledger

    data, base, _ = houses
    args = [data, *base, "-o", tmp_path / "m.json", "--epsilon", "1", "--budget", "1.5"]
    key = _ledger.dataset_key(None, pd.read_csv(data))
    with _ledger.locked(ledger_file):
        proc = subprocess.Popen(
            [sys.executable, "-c", HARNESS, "train", *map(str, args)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 90
        while not _waits_for_flock(proc.pid):
            assert proc.poll() is None, "heml train finished without waiting for the lock"
            assert time.monotonic() < deadline, "heml train never asked for the ledger lock"
            time.sleep(0.05)
        # the other run's spend lands while heml train waits
        ledger = _ledger.load(ledger_file)
        eps, dlt = _ledger.budgets(
            ledger, key, epsilon=1.5, delta=None, allow_raise=False, default_delta=1 / 400
        )
        _ledger.reserve(
            ledger,
            key,
            source="other",
            budget_epsilon=eps,
            budget_delta=dlt,
            epsilon=1.0,
            delta=1e-5,
            model="other.json",
        )
        _ledger.save(ledger_file, ledger)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "privacy budget refused" in err, err
    assert _ledger.spent(_ledger.load(ledger_file), key)[0] == 1.0


def _waits_for_flock(pid: int) -> bool:
    """True while process ``pid`` is blocked on a flock (a "->" line in /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields:
            rest = fields[fields.index("->") + 1 :]
            if len(rest) > 3 and rest[3] == str(pid):
                return True
    return False


def test_default_ledger_is_per_user(tmp_path, monkeypatch):
    from heml.dp._ledger import default_path

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "heml" / "privacy-ledger.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("relative/dir", ""):  # the XDG spec ignores a relative XDG_DATA_HOME
        monkeypatch.setenv("XDG_DATA_HOME", unset)
        assert default_path() == tmp_path / "home/.local/share/heml/privacy-ledger.json"


def test_fingerprint_normalizes_zero_and_missing_values():
    from heml.dp._ledger import table_fingerprint

    a = pd.DataFrame({"x": [0.0, np.nan, 1.5], "s": ["u", None, "v"]})
    b = pd.DataFrame({"x": [-0.0, float("nan"), 1.5], "s": ["u", np.nan, "v"]})
    assert table_fingerprint(a) == table_fingerprint(b)
    assert table_fingerprint(a) != table_fingerprint(a.assign(s=["u", "nan", "v"]))
    assert table_fingerprint(a).startswith("table:")


def test_ledger_file_is_private_and_checked(houses, tmp_path, ledger_file, capsys):
    from heml.dp import _ledger

    data, base, _ = houses
    assert train_here(data, *base, "-o", tmp_path / "m.json", "--epsilon", "1")[0] == 0
    assert ledger_file.stat().st_mode & 0o777 == 0o600  # it names datasets and models
    spends = next(iter(_ledger.load(ledger_file)["datasets"].values()))["spends"]
    assert len(spends[0]["id"]) == 16 and spends[0]["status"] == "ok"
    for text, message in [
        ('{"schema": "other"}', "is not a heml privacy ledger"),
        ('{"schema": "heml.privacy-ledger", "schema_version": 1}', "pass --ledger"),
        ('{"schema": "heml.privacy-ledger", "schema_version": 2, "datasets": []}', "damaged"),
        ("{", "cannot read privacy ledger"),
    ]:
        ledger_file.write_text(text)
        code, err = train_here(
            data, *base, "-o", tmp_path / "m.json", "--epsilon", "1", capsys=capsys
        )
        assert code == 2 and message in err, err
        assert ledger_file.read_text() == text  # left as it was


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_epsilon_must_be_positive_and_finite_in_one_line(
    houses, tmp_path, ledger_file, capsys, value
):
    data, base, _ = houses
    out = ["-o", tmp_path / "m.json"]
    code, err = train_here(data, *base, "--epsilon", value, *out, capsys=capsys)
    assert code == 2 and "positive, finite" in err and "inf for no privacy" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not ledger_file.exists()


def test_bounds_in_the_wrong_units_warn_on_stderr(tmp_path):
    # issue 15 item 1: raw breast-cancer features with --bounds=-3,3 were silently clipped
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    df = data.frame.rename(columns={"target": "label"})
    df.to_csv(tmp_path / "cancer.csv", index=False)
    base = [
        "cancer.csv",
        "--target",
        "label",
        "--classes",
        "0,1",
        "--epsilon",
        "1",
        "--delta",
        "1e-5",
        "--seed",
        "0",
    ]
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


def test_out_of_bounds_policy_name_and_stdin(tmp_path, ledger_file):
    # issue 15 items 2 and 13: one out-of-bounds policy for LO,HI and FILE.json bounds, a
    # --out-of-bounds flag, --name, and the CSV from stdin
    import heml

    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (300, 2))
    df = pd.DataFrame(X, columns=["a", "b"])
    df["y"] = (X[:, 0] > 0).astype(int)
    (tmp_path / "d.csv").write_text(df.to_csv(index=False))
    (tmp_path / "b.json").write_text(json.dumps({"a": [-1, 1], "b": [-1, 1]}))
    base = ["--target", "y", "--classes", "0,1", "--epsilon", "1", "--delta", "1e-5"]
    policies = {}
    for tag, bounds in (("pair", "--bounds=-1,1"), ("file", "--bounds=b.json")):
        for flag in ([], ["--out-of-bounds", "error"]):
            out = f"{tag}{len(flag)}.json"
            r = heml_train("d.csv", *base, bounds, *flag, "-o", out, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            policies[(tag, tuple(flag))] = heml.LinearModel.load(
                tmp_path / out
            ).bounds.out_of_bounds
    assert policies[("pair", ())] == policies[("file", ())] == "clip"
    flag = ("--out-of-bounds", "error")
    assert policies[("pair", flag)] == policies[("file", flag)] == "error"
    r = subprocess.run(
        [sys.executable, "-m", "heml", "train", "-", *base, "--bounds=-1,1", "--name", "loans",
         "-o", "m.json", "--dataset-id", "loans-2026"],
        input=df.to_csv(index=False), capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert heml.LinearModel.load(tmp_path / "m.json").name == "loans"


def test_a_ledger_reached_through_a_symlink_is_the_same_budget(houses, tmp_path, capsys):
    # two spellings of one ledger file must share one lock and one file: a symlink used to get
    # its own sidecar lock, and the first save replaced the link by a private copy
    data, base, _ = houses
    real = tmp_path / "ledgers" / "real.json"
    real.parent.mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(real)
    args = [*base, "--epsilon", "1", "--budget", "1.5"]
    assert train_here(data, *args, "--ledger", link, "-o", tmp_path / "a.json")[0] == 0
    assert link.is_symlink() and real.exists()
    code, err = train_here(data, *args, "--ledger", real, "-o", tmp_path / "b.json", capsys=capsys)
    assert code == 3 and "privacy budget refused" in err, err


def test_output_folder_is_created(houses, tmp_path, ledger_file, capsys):
    # the README's `-o models/NAME.json` on a fresh checkout: the folder does not exist yet
    data, base, _ = houses
    out = tmp_path / "models" / "new" / "houses.json"
    code, err = train_here(data, *base, "--epsilon", "1", "-o", out, capsys=capsys)
    assert code == 0, err
    assert out.exists()
