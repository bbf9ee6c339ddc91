"""Shared fixtures: fitted models, a model folder, a real server on loopback, a client."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import heml


def assert_scores_close(actual, expected, tol=1e-4):
    """The project's accuracy contract: |encrypted - plaintext| ≤ tol · max(1, |y|)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = tol * np.maximum(1.0, np.abs(expected))
    worst = np.max(np.abs(actual - expected) - bound) if actual.size else -1
    assert worst <= 0, f"error exceeds tolerance by {worst:.3g}"


@pytest.fixture(autouse=True, scope="session")
def _ledger_outside_home(tmp_path_factory):
    """`heml train` charges a per-user ledger under XDG_DATA_HOME: tests (and the processes
    they start) never touch the real user's."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture(autouse=True, scope="session")
def _no_idle_joblib_workers():
    """Stop joblib's worker processes when the test session ends.

    Tests that run ``n_jobs=2`` (tests/test_dp_accountant.py) start joblib's reusable loky
    executor: two worker processes of about 480 MB each that wait up to 300 s for more work.
    A normal interpreter exit stops them, but ``make mutate`` runs each mutant's tests in a
    forked process that ends with ``os._exit``: its workers were orphaned and lived on for
    five minutes, one pair per mutant, until the machine ran out of memory and the kernel killed
    mutmut's fork server (the ``ForkServerCrashError`` of the first full run, docs/testing.md)."""
    yield
    import sys

    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(reusable, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on 127.0.0.1 (a free port) shared by one test module, stopped by
    pid at its end (tests/cluster_support.py; skipped without the binary unless CI=true)."""
    from .cluster_support import Redis

    server = Redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cancer():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    return X, y, clf


@pytest.fixture(scope="session")
def wine():
    X, y = load_wine(return_X_y=True)
    labels = np.array(["barolo", "grignolino", "barbera"])[y]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, labels)
    return X, labels, clf


@pytest.fixture(scope="session")
def diabetes_raw():
    """Linear regression on raw, unscaled features of magnitude 1e3–1e4 with large outputs."""
    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    scale = rng.uniform(1e3, 1e4, size=X.shape[1])
    Xr = X * scale + scale  # values ~1e3..1e4
    yr = y * 1000.0  # outputs ~1e5
    reg = LinearRegression().fit(Xr, yr)
    return Xr, yr, reg


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, cancer, wine, diabetes_raw):
    folder = tmp_path_factory.mktemp("models")
    heml.export(cancer[2], name="cancer").save(folder / "cancer.json")
    heml.export(wine[2], name="wine").save(folder / "wine.json")
    Xr, _, reg = diabetes_raw
    heml.export(reg, name="diabetes-raw", bounds=(Xr.min(0), Xr.max(0))).save(
        folder / "diabetes-raw.json"
    )
    (folder / "broken.json").write_text('{"schema": "heml.linear-model", "schema_version": 1}')
    return folder


@pytest.fixture(scope="session")
def server(model_dir):
    with heml.serve(model_dir, port=0) as handle:
        yield handle


@pytest.fixture()
def client(server):
    with heml.Client(f"localhost:{server.port}", timeout=60) as c:
        yield c


class ServeProcess:
    """`python -m heml serve …` as a user runs it; stderr is drained in a thread (a full pipe
    would block the server's logging) and kept for assertions."""

    def __init__(self, *args: str, timeout: float = 60.0) -> None:
        import subprocess
        import sys
        import threading
        import time

        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heml", "serve", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                if "heml serving" in line:
                    self._ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("server did not start:\n" + "".join(self.lines))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig=None, timeout: float = 60.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config):
    """Under mutmut (a mutant's run): freeze what the fork server had already built.

    Each mutant's tests run in a process forked from mutmut's fork server, which has imported
    heml, scikit-learn, gRPC and every selected test module. pytest's session end calls
    ``gc.collect()`` (twice); it walked that whole inherited heap, 0.2 s of a child's 0.45 s
    when its one test took milliseconds, and wrote to every page it touched (copy-on-write).
    Frozen objects are never collected in that short-lived child, which exits with
    ``os._exit``; objects the tests create are collected as usual. Outside mutmut's mutant runs
    nothing changes."""
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        import gc

        gc.freeze()


# ---------------------------------------------------------------------- make mutate
# Under mutmut's coverage pass (MUTANT_UNDER_TEST=stats) each test's whole time (setup, call and
# teardown: fixtures included) is recorded here, beside mutmut-stats.json in mutants/; mutmut
# itself records only the call phase, which misses what makes a file slow (a trained model, a
# server started by a fixture).
TEST_SECONDS = "mutate-test-seconds.json"
_spent: dict[str, float] = {}


# Under a mutant's run, each test that fails (kills the mutant) is appended here as
# "function<TAB>test id<TAB>mutant": the mutant's siblings (the other mutants of the same
# function) then run that test first, since one test usually catches most breaks of one
# function. The path is fixed when the fork server imports this file (its working directory
# is mutants/): a test that changes the working directory must not send the line elsewhere.
KILLERS = os.path.abspath("mutate-killers.txt")


def _mutated_function(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0]


def pytest_runtest_logreport(report):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if mutant == "stats":
        _spent[report.nodeid] = _spent.get(report.nodeid, 0.0) + report.duration
    elif "__mutmut_" in mutant and report.failed:
        # one short line in append mode: a single write, whole, beside the other mutant runs
        with open(KILLERS, "a", encoding="utf-8") as log:
            log.write(f"{_mutated_function(mutant)}\t{report.nodeid}\t{mutant}\n")


def _killers(function: str) -> set[str]:
    """The tests that killed earlier mutants of ``function`` in this run (KILLERS)."""
    try:
        with open(KILLERS, encoding="utf-8") as log:
            lines = log.read().splitlines()
    except OSError:
        return set()
    return {
        rest.split("\t")[0]
        for fn, _, rest in (line.partition("\t") for line in lines)
        if fn == function
    }


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not _spent:
        return
    import json
    from pathlib import Path

    path = Path(TEST_SECONDS)
    try:
        seconds = json.loads(path.read_text())
    except (OSError, ValueError):
        seconds = {}
    seconds.update(_spent)
    path.write_text(json.dumps(seconds, indent=0, sort_keys=True))


def _test_seconds() -> dict[str, float]:
    """Each test's recorded time: whole (TEST_SECONDS) where known, else mutmut's call time."""
    import contextlib
    import json
    from pathlib import Path

    seconds: dict[str, float] = {}
    for name, read in (
        ("mutmut-stats.json", lambda data: data["duration_by_test"]),
        (TEST_SECONDS, lambda data: data),
    ):
        with contextlib.suppress(OSError, ValueError, KeyError):
            seconds.update(read(json.loads(Path(name).read_text())))
    return seconds


def pytest_collection_modifyitems(config, items):
    """Under mutmut (``make mutate``, a mutant's run): cheapest test files first.

    mutmut runs the tests that reach a mutant's function, stopping at the first failure, in
    no particular order. Most mutants are killed by the small guard tests
    (tests/test_guards_*.py), so running those first, then the other files, each group by the
    recorded time of the file's selected tests (fixtures included), ends a killed mutant's run
    before the slow files set up their fixtures (a trained model, a gRPC server). Within a file
    (kept together: module fixtures are set up once) the cheapest recorded test goes first, then
    the file's own order: mutmut passes a mutant's tests from a set, in an order that changes
    with each run's hash seed, and a test that hangs on a mutant until its deadline (20 s) could
    come before one that fails at once. Before all that: the files, and in them the tests, that
    killed another mutant of the same function earlier in this run (KILLERS): one test usually
    catches most breaks of a function, and the Guard.exit mutants that only the last of 50
    tests catches waited 20 s each. Outside mutmut's mutant runs nothing changes."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    from pathlib import Path

    seconds = _test_seconds()
    killers = _killers(_mutated_function(mutant))
    killer_files = {test.split("::")[0] for test in killers}
    cost: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        cost[path] = cost.get(path, 0.0) + seconds.get(item.nodeid, 1.0)

    def rank(item) -> tuple:
        path = item.nodeid.split("::")[0]
        guard = Path(path).name.startswith("test_guards_")
        return (
            path not in killer_files,  # a file that killed a sibling mutant first
            not guard,
            cost[path],
            path,
            item.nodeid not in killers,  # and, in it, the test that did
            seconds.get(item.nodeid, 1.0),
            item.location[1] or 0,
        )

    items.sort(key=rank)
