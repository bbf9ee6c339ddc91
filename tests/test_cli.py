"""The command line as a user drives it: subprocesses, a real server, real files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import heml

from .conftest import ServeProcess, free_port

HEML = [sys.executable, "-m", "heml"]


def run(*args, check=False, timeout=120, **kw):
    proc = subprocess.run([*HEML, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"heml {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cli_server(model_dir):
    port = free_port()
    server = ServeProcess("--models", str(model_dir), "--port", str(port))
    yield f"127.0.0.1:{port}", server, server.lines
    assert server.stop() == 0


def test_serve_logs_models_and_address(cli_server):
    address, server, _lines = cli_server
    log = server.log
    assert "model cancer v1: binary, d=30, k=1" in log
    assert "model wine v1: multiclass, d=13, k=3" in log
    assert "skipping model file broken.json" in log
    assert f"on {address}" in log


def test_models_table(cli_server):
    address, _proc, _lines = cli_server
    out = run("models", "--server", address, check=True).stdout
    assert "MODEL" in out and "DP GUARANTEE" in out
    assert "cancer" in out and "wine" in out and "not private" in out
    data = run("models", "--server", address, "--json", check=True).stdout
    import json

    assert {m["name"] for m in json.loads(data)} == {"cancer", "wine", "diabetes-raw"}


def test_predict_csv_matches_sklearn_and_keeps_columns(cli_server, cancer, tmp_path):
    address, _proc, _lines = cli_server
    X, _y, clf = cancer
    frame = X.copy()
    frame.insert(0, "patient_id", np.arange(len(X)) + 1000)
    src = tmp_path / "patients.csv"
    frame.to_csv(src, index=False)
    dst = tmp_path / "scored.csv"
    proc = run(
        "predict",
        "--server",
        address,
        "--model",
        "cancer",
        str(src),
        "-o",
        str(dst),
        "--keep",
        "patient_id",
        "--chunk-size",
        "100",
        check=True,
    )
    assert "scored 569 row(s)" in proc.stderr
    out = pd.read_csv(dst)
    assert list(out.columns) == ["patient_id", "prediction", "proba_0", "proba_1"]
    np.testing.assert_array_equal(out["patient_id"], frame["patient_id"])
    np.testing.assert_array_equal(out["prediction"], clf.predict(X))
    assert np.abs(out[["proba_0", "proba_1"]].to_numpy() - clf.predict_proba(X)).max() < 1e-4


def test_predict_errors_are_one_line_with_exit_codes(cli_server, cancer, tmp_path):
    address, _proc, _lines = cli_server
    X, _y, _clf = cancer
    src = tmp_path / "partial.csv"
    X.drop(columns=["mean radius", "worst area"]).to_csv(src, index=False)
    proc = run("predict", "--server", address, "--model", "cancer", str(src))
    assert proc.returncode == 2
    assert "lacks column(s)" in proc.stderr and "mean radius" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("predict", "--server", address, "--model", "nope", str(src))
    assert proc.returncode == 1 and "no model named 'nope'" in proc.stderr
    proc = run(
        "predict", "--server", "127.0.0.1:1", "--model", "cancer", str(src), "--timeout", "3"
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    proc = run("predict", "--server", address, "--model", "cancer", str(tmp_path / "none.csv"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_multiclass_csv_has_a_probability_column_per_class(cli_server, wine, tmp_path):
    address, _proc, _lines = cli_server
    X, _labels, clf = wine
    src = tmp_path / "wine.csv"
    pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]).to_csv(src, index=False)
    out = run("predict", "--server", address, "--model", "wine", str(src), "-q", check=True).stdout
    frame = pd.read_csv(__import__("io").StringIO(out))
    assert list(frame.columns) == ["prediction"] + [f"proba_{c}" for c in clf.classes_]
    np.testing.assert_array_equal(frame["prediction"], clf.predict(X))


def test_key_file_is_private_reused_and_never_printed(cli_server, cancer, tmp_path):
    address, _proc, _lines = cli_server
    X, _y, _clf = cancer
    keyfile = tmp_path / "me.keys"
    proc = run("keys", "generate", "--out", str(keyfile), check=True)
    assert (os.stat(keyfile).st_mode & 0o777) == 0o600
    before = keyfile.read_bytes()
    secret = __import__("json").loads(before)["master_seed"]
    assert secret[:40] not in proc.stdout + proc.stderr
    assert run("keys", "generate", "--out", str(keyfile)).returncode == 2  # no silent overwrite
    src = tmp_path / "x.csv"
    X.iloc[:10].to_csv(src, index=False)
    proc = run(
        "predict",
        "--server",
        address,
        "--model",
        "cancer",
        str(src),
        "--keys",
        str(keyfile),
        check=True,
    )
    assert keyfile.read_bytes() == before
    assert secret[:40] not in proc.stdout + proc.stderr


def test_serve_stops_cleanly_on_sigterm(model_dir):
    port = free_port()
    server = ServeProcess("--models", str(model_dir), "--port", str(port), "--workers", "2")
    with heml.Client(f"127.0.0.1:{port}") as c:
        assert len(c.models()) == 3
    assert server.stop() == 0


def test_serve_refuses_a_folder_without_valid_models(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    proc = run("serve", "--models", str(tmp_path), "--port", "0")
    assert proc.returncode == 2
    assert "no valid model" in proc.stderr and "notes.json" in proc.stderr


def test_demo_runs_end_to_end():
    proc = run("demo", timeout=120, check=True)
    out = proc.stdout
    for needle in (
        "agreement with plaintext",
        "accuracy (encrypted)",
        "one prediction",
        "predictions/s",
        "KiB up",
        "DP guarantee",
    ):
        assert needle in out, out
    err = float(out.split("max |p_enc - p_plain| = ")[1].split()[0])
    assert err < 1e-4


def test_version_and_help():
    assert run("--version", check=True).stdout.strip() == f"heml {heml.__version__}"
    helptext = run("--help", check=True).stdout
    for cmd in ("serve", "models", "predict", "keys", "demo"):
        assert cmd in helptext
