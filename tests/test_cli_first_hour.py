"""What a newcomer hits in the first hour (issue 15): each behaviour a user saw go wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import heml
from heml.client import with_default_port
from heml.errors import InputError

from .conftest import ServeProcess, free_port
from .test_cli import cli_server, run  # noqa: F401  (the module-scoped server fixture)


def test_a_second_server_on_a_taken_port_is_refused(cli_server, model_dir):  # noqa: F811
    address, _server, _lines = cli_server
    port = address.rsplit(":", 1)[1]
    proc = run("serve", "--models", str(model_dir), "--port", port, timeout=60)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the model folder's log lines
    assert last.startswith("heml serve: ") and "in use by another process" in last
    assert port in last
    # the running server still answers alone: every call sees its 3 models
    with heml.Client(address) as c:
        assert all(len(c.models()) == 3 for _ in range(5))


def test_a_restart_on_the_same_port_right_after_a_stop_works(model_dir):
    port = free_port()
    for _ in range(2):
        server = ServeProcess("--models", str(model_dir), "--port", str(port))
        with heml.Client(f"127.0.0.1:{port}") as c:
            assert len(c.models()) == 3  # a connection now lingers in TIME_WAIT
        assert server.stop() == 0


def test_failed_predict_leaves_no_output_file(cli_server, cancer, tmp_path):  # noqa: F811
    address, _proc, _lines = cli_server
    X, _y, _clf = cancer
    frame = X.iloc[:300].copy()
    frame.iloc[250, 3] = np.nan  # chunk 3 of 100 rows fails after two were scored
    src = tmp_path / "rows.csv"
    frame.to_csv(src, index=False)
    dst = tmp_path / "out.csv"
    proc = run(
        "predict", "--server", address, "--model", "cancer", str(src), "-o", str(dst),
        "--chunk-size", "100",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temporary file left behind either
    # the error names the CSV line a user finds in an editor: header = line 1, row 250 = 252
    assert f"line 252 of {src.name}" in proc.stderr and "row 250" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # an existing output is kept as it was when a run fails
    dst.write_text("previous results\n")
    assert run("predict", "--server", address, "--model", "cancer", str(src), "-o", str(dst),
               "--chunk-size", "100").returncode == 2  # fmt: skip
    assert dst.read_text() == "previous results\n"


def test_predict_reads_stdin_and_empty_files_fail_in_one_line(cli_server, cancer, tmp_path):  # noqa: F811
    address, _proc, _lines = cli_server
    X, _y, clf = cancer
    csv = X.iloc[:20].to_csv(index=False)
    proc = run("predict", "--server", address, "--model", "cancer", "-", "-q", input=csv)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(__import__("io").StringIO(proc.stdout))
    np.testing.assert_array_equal(out["prediction"], clf.predict(X.iloc[:20]))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = run("predict", "--server", address, "--model", "cancer", str(empty))
    assert proc.returncode == 2 and "is empty" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(cli_server, cancer, tmp_path):  # noqa: F811
    address, _proc, _lines = cli_server
    X, _y, _clf = cancer
    src = tmp_path / "x.csv"
    X.to_csv(src, index=False)
    proc = run("predict", "--server", address, "--model", "cancer", str(src), "-o",
               str(tmp_path / "o.csv"), "--chunk-size", "50")  # fmt: skip
    assert proc.returncode == 0
    assert "scoring" not in proc.stderr and "%" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"scored {len(X)} row(s) with cancer v1 -> {tmp_path / 'o.csv'}"
    ]


def test_connection_errors_say_what_to_check(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("a\n1\n")
    proc = run("models", "--server", "127.0.0.1:1", "--timeout", "3")
    assert proc.returncode == 1
    assert "is `heml serve` running there?" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_target_without_port_means_the_serve_default():
    assert with_default_port("localhost") == "localhost:50051"
    assert with_default_port("10.0.0.7") == "10.0.0.7:50051"
    assert with_default_port("localhost:7000") == "localhost:7000"
    assert with_default_port("[::1]") == "[::1]:50051"
    assert with_default_port("[::1]:7000") == "[::1]:7000"
    assert with_default_port("::1") == "[::1]:50051"
    assert with_default_port("dns:///svc.example:7000") == "dns:///svc.example:7000"
    assert with_default_port("unix:/tmp/heml.sock") == "unix:/tmp/heml.sock"
    assert with_default_port("h1:7000,h2") == "h1:7000,h2:50051"  # a list of replicas
    assert with_default_port("[::1]:7000,127.0.0.1") == "[::1]:7000,127.0.0.1:50051"


def test_input_errors_can_name_csv_lines():
    err = InputError.naming_rows("column 'a' has 2 missing value(s), first at {0}", 5)
    assert str(err) == "column 'a' has 2 missing value(s), first at row 5"
    assert err.rows == (5,)
    assert err.located(lambda r: f"line {r + 2}") == (
        "column 'a' has 2 missing value(s), first at line 7"
    )
    plain = InputError("no rows here")
    assert plain.located(lambda r: "never") == "no rows here"


def test_save_into_a_missing_folder_creates_it(cancer, tmp_path):
    X, _y, clf = cancer
    model = heml.export(clf, name="cancer", bounds=(X.min(axis=0) - 1, X.max(axis=0) + 1))
    path = tmp_path / "new" / "deeper" / "cancer.json"
    model.save(path)
    assert heml.LinearModel.load(path).name == "cancer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["cancer.json"]


@pytest.mark.parametrize("bad", ["--chunk-size=0"])
def test_predict_rejects_bad_chunk_size(cli_server, bad, tmp_path):  # noqa: F811
    address, _proc, _lines = cli_server
    src = tmp_path / "x.csv"
    src.write_text("a\n1\n")
    proc = run("predict", "--server", address, "--model", "cancer", str(src), bad)
    assert proc.returncode == 2 and "--chunk-size" in proc.stderr


def test_help_shows_every_default_and_what_each_option_is():
    serve = " ".join(run("serve", "--help", check=True).stdout.split())
    for needle in ("model folder (0: never) (default: 2.0)", "refused (default: 1.0)"):
        assert needle in serve, serve
    assert "calls get (default: 30.0)" in serve and "(one per core)" not in serve
    assert "never holds a secret key" in serve  # serve has a description
    predict = " ".join(run("predict", "--help", check=True).stdout.split())
    assert "seconds per call (default: 60.0)" in predict
    assert "(memory bound) (default: 16384)" in predict
    assert "name of the model" in predict and "model version (default: the latest)" in predict
    assert "HEML_SERVER" in predict
    demo = " ".join(run("demo", "--help", check=True).stdout.split())
    assert "DP budget of the demo model (default: 1.0)" in demo
    bench = " ".join(run("bench", "--help", check=True).stdout.split())
    assert "seconds a baseline may take" in bench and "(default: 20" in bench
    assert run("-V", check=True).stdout.strip() == f"heml {heml.__version__}"


def test_heml_server_environment_variable_and_keys_dash_o(cli_server, cancer, tmp_path):  # noqa: F811
    import os

    address, _proc, _lines = cli_server
    env = {**os.environ, "HEML_SERVER": address}
    proc = run("models", env=env)
    assert proc.returncode == 0 and "cancer" in proc.stdout, proc.stderr
    keyfile = tmp_path / "k.keys"
    assert run("keys", "generate", "-o", str(keyfile)).returncode == 0
    assert keyfile.exists()


def test_models_table_fits_100_columns(tmp_path, cancer):
    from sklearn.linear_model import LogisticRegression

    from heml.dp import DPLogisticRegression

    X, y, _clf = cancer
    Z = ((X - X.mean()) / X.std()).clip(-3, 3).to_numpy()
    long_name = "a-model-name-that-goes-on-and-on-for-sixty-characters-or-so"
    dp = DPLogisticRegression(epsilon=0.5, bounds_X=(-3, 3), random_state=0)
    dp = (
        dp.fit(Z, y)
        if "classes" not in dp.get_params()
        else dp.set_params(classes=[0, 1]).fit(Z, y)
    )
    heml.export(dp, name=long_name).save(tmp_path / "long.json")
    heml.export(LogisticRegression().fit(Z, y), name="plain", bounds=(-3, 3)).save(
        tmp_path / "plain.json"
    )
    port = free_port()
    server = ServeProcess("--models", str(tmp_path), "--port", str(port))
    try:
        out = run("models", "--server", f"127.0.0.1:{port}", check=True).stdout
    finally:
        assert server.stop() == 0
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "ε=0.5, δ=1e-05" in out and "plain" in out and "a-model-name-that" in out


def test_table_errors_name_the_file_list_columns_and_suggest(tmp_path):
    from heml._csvdata import InvalidInput, read_table

    src = tmp_path / "loans.csv"
    src.write_text("income,age,label\n1,2,0\n3,4,1\n")
    with pytest.raises(InvalidInput) as e:
        read_table(src, "Label", name="loans.csv")
    msg = str(e.value)
    assert "loans.csv" in msg and "did you mean 'label'?" in msg
    assert "(columns: income, age, label)" in msg
    with pytest.raises(InvalidInput, match="did you mean 'income'"):
        read_table(src.read_bytes(), "label", "incme", name="loans.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InvalidInput, match="is empty"):
        read_table(empty, "label")
    header_only = tmp_path / "header.csv"
    header_only.write_text("income,label\n")
    with pytest.raises(InvalidInput, match="no data rows"):
        read_table(header_only, "label")
