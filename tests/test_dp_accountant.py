"""BudgetAccountant: check before the data, spend after the model, refuse overdrafts."""

import copy
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from heml.dp import BudgetAccountant, BudgetError, DPLinearRegression, DPLogisticRegression

C01 = [0, 1]  # the public label set of _data()


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, (X[:, 0] > 0).astype(int)


def test_spend_and_remaining():
    acc = BudgetAccountant(epsilon=3.0, delta=2e-5)
    acc.spend(1.0, 1e-5)
    eps, delta = acc.remaining()
    assert eps == pytest.approx(2.0) and delta == pytest.approx(1e-5)
    assert acc.spent == (1.0, 1e-5)


def test_budget_error_says_requested_and_remaining_and_changes_nothing():
    acc = BudgetAccountant(epsilon=1.5, delta=1e-4)
    acc.spend(1.0, 1e-5)
    with pytest.raises(BudgetError, match=r"requested \(epsilon=1,.*only \(epsilon=0.5") as info:
        acc.spend(1.0, 1e-5)
    assert isinstance(info.value, ValueError)
    assert acc.spent == (1.0, 1e-5) and len(acc.ledger) == 1


def test_many_small_spends_fit_exactly():
    acc = BudgetAccountant(epsilon=1.0, delta=1.0)
    for _ in range(10):
        acc.spend(0.1, 0.0)
    with pytest.raises(BudgetError):
        acc.spend(1e-6, 0.0)


def test_refused_fit_never_reads_data_and_spends_nothing():
    acc = BudgetAccountant(epsilon=0.5, delta=1e-3)

    class Exploding:
        def __array__(self, *a, **k):
            raise AssertionError("data was read before the budget check")

    with pytest.raises(BudgetError):
        DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3), accountant=acc).fit(
            Exploding(), Exploding()
        )
    assert acc.spent == (0.0, 0.0)


def test_fit_spends_once_after_success():
    acc = BudgetAccountant(epsilon=3.0, delta=2e-5)
    X, y = _data()
    DPLogisticRegression(
        classes=C01, epsilon=1.0, bounds_X=(-3, 3), accountant=acc, random_state=0
    ).fit(X, y)
    DPLinearRegression(
        epsilon=1.0, bounds_X=(-3, 3), bounds_y=(-3, 3), accountant=acc, random_state=0
    ).fit(X, X[:, 0])
    assert acc.spent == pytest.approx((2.0, 2e-5))
    with pytest.raises(BudgetError):  # a third fit at δ=1e-5 exceeds δ
        DPLogisticRegression(classes=C01, epsilon=0.5, bounds_X=(-3, 3), accountant=acc).fit(X, y)
    assert acc.spent == pytest.approx((2.0, 2e-5))


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.array([[np.nan, 1.0]] * 50), np.arange(50) % 2, "NaN"),
        (np.array([[np.inf, 1.0]] * 50), np.arange(50) % 2, "infinity"),
        (np.array([["a", "b"]] * 50), np.arange(50) % 2, "convert"),
        (np.ones((50, 2)), np.arange(50) % 3, "not in classes"),
        (np.ones((0, 2)), np.zeros(0), "0 sample"),
        (np.ones((50, 2)), np.arange(50) % 2, "not below 1/n"),  # δ=0.1 ≥ 1/50
    ],
)
def test_bad_input_raises_before_spending(X, y, match):
    acc = BudgetAccountant(epsilon=10.0, delta=0.5)
    delta = 0.1 if match == "not below 1/n" else 1e-5
    with pytest.raises(ValueError, match=match):
        DPLogisticRegression(
            classes=C01, epsilon=1.0, delta=delta, bounds_X=(-3, 3), accountant=acc
        ).fit(X, y)
    assert acc.spent == (0.0, 0.0)


@pytest.mark.parametrize("eps", [0, -1.0, float("nan"), "1", None])
def test_bad_epsilon(eps):
    acc = BudgetAccountant()
    X, y = _data()
    with pytest.raises(ValueError, match="epsilon"):
        DPLogisticRegression(classes=C01, epsilon=eps, bounds_X=(-3, 3), accountant=acc).fit(X, y)
    assert acc.spent == (0.0, 0.0)


def test_clone_and_deepcopy_share_the_accountant():
    acc = BudgetAccountant(epsilon=2.0, delta=1e-4)
    assert copy.deepcopy(acc) is acc
    est = DPLogisticRegression(
        classes=C01, epsilon=0.5, bounds_X=(-3, 3), accountant=acc, random_state=0
    )
    assert clone(est).accountant is acc
    X, y = _data()
    cross_val_score(est, X, y, cv=3)  # three clones fit: 3 × 0.5 spent in the caller's ledger
    assert acc.spent[0] == pytest.approx(1.5)
    with pytest.raises(BudgetError):
        cross_val_score(est, X, y, cv=3, error_score="raise")
    assert acc.spent[0] == pytest.approx(2.0)  # the first clone fitted, the second was refused


def test_with_block_sets_the_default_and_restores_it():
    X, y = _data()
    before = BudgetAccountant.load_default()
    with BudgetAccountant(epsilon=1.0, delta=1e-5) as acc:
        assert BudgetAccountant.load_default() is acc
        DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3), random_state=0).fit(X, y)
        with pytest.raises(BudgetError):
            DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3)).fit(X, y)
    assert BudgetAccountant.load_default() is before
    assert acc.spent == (1.0, 1e-5)


def test_accountant_argument_type_is_checked():
    X, y = _data()
    with pytest.raises(TypeError, match="BudgetAccountant"), warnings.catch_warnings():
        DPLogisticRegression(classes=C01, bounds_X=(-3, 3), accountant="budget").fit(X, y)


# ------------------------------------------------------------------ atomic reservation (threads)
class _RacingAccountant(BudgetAccountant):
    """A real accountant whose early check waits until both fits have passed it: the two fits
    then race for the spend, which is the interleaving that let both keep a model before."""

    def __init__(self, *args, barrier, **kwargs):
        super().__init__(*args, **kwargs)
        self.barrier = barrier

    def check(self, epsilon, delta):
        super().check(epsilon, delta)
        self.barrier.wait(timeout=30)


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_two_threads_cannot_both_spend_the_last_epsilon(kind):
    import threading

    acc = _RacingAccountant(epsilon=1.0, delta=1e-4, barrier=threading.Barrier(2))
    X, y = _data(n=2000)
    if kind == "logistic":
        make = lambda: DPLogisticRegression(  # noqa: E731
            classes=C01, epsilon=1.0, bounds_X=(-3, 3), accountant=acc, random_state=0
        )
        target = y
    else:
        make = lambda: DPLinearRegression(  # noqa: E731
            epsilon=1.0, bounds_X=(-3, 3), bounds_y=(-3, 3), accountant=acc, random_state=0
        )
        target = X[:, 0]
    ests, errors = [make(), make()], []

    def run(est):
        try:
            est.fit(X, target)
        except BudgetError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in ests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(errors) == 1  # one fit was refused ...
    assert sum(hasattr(e, "coef_") for e in ests) == 1  # ... and kept no working model
    assert acc.spent == (1.0, 1e-5) and len(acc.ledger) == 1


def test_refused_refit_forgets_the_earlier_model():
    acc = BudgetAccountant(epsilon=1.0, delta=1e-4)
    X, y = _data()
    est = DPLogisticRegression(classes=C01, bounds_X=(-3, 3), accountant=acc, random_state=0)
    est.fit(X, y)
    assert hasattr(est, "coef_")
    with pytest.raises(BudgetError):
        est.fit(X, y)
    assert not hasattr(est, "coef_") and not hasattr(est, "dp_guarantee_")


# ------------------------------------------------------------------ copies in other processes
def test_unpickling_in_the_same_process_returns_the_same_accountant():
    import pickle

    acc = BudgetAccountant(epsilon=2.0, delta=1e-4)
    assert pickle.loads(pickle.dumps(acc)) is acc


def test_cross_val_score_in_worker_processes_cannot_bypass_the_budget():
    # before: five ε=1 fits ran in two worker processes against a budget of 2 and the caller's
    # ledger recorded nothing. Now each worker's copy refuses, so every fit fails.
    acc = BudgetAccountant(epsilon=2.0, delta=1e-3)
    X, y = _data()
    est = DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3), accountant=acc)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="fits failed"):
        warnings.simplefilter("ignore")
        cross_val_score(est, X, y, cv=5, n_jobs=2)
    assert acc.spent == (0.0, 0.0)
    with pytest.raises(BudgetError, match="another process"):
        cross_val_score(est, X, y, cv=5, n_jobs=2, error_score="raise")


def test_file_backed_accountant_records_spends_from_worker_processes(tmp_path):
    acc = BudgetAccountant(epsilon=2.0, delta=1e-3, path=tmp_path / "ledger.json")
    X, y = _data()
    est = DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3), accountant=acc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(est, X, y, cv=5, n_jobs=2)
    assert np.isfinite(scores).sum() == 2  # two fits paid, three refused
    assert acc.spent == (2.0, 2e-5) and len(acc.ledger) == 2
    # another handle on the same file sees the same ledger; other totals are refused
    assert BudgetAccountant(epsilon=2.0, delta=1e-3, path=tmp_path / "ledger.json").spent[0] == 2
    with pytest.raises(ValueError, match="holds the budget"):
        BudgetAccountant(epsilon=5.0, delta=1e-3, path=tmp_path / "ledger.json")


def test_default_accountant_is_carried_into_worker_processes(tmp_path):
    # before: with a default accountant set, estimators with accountant=None fitted in worker
    # processes used each worker's own unlimited default, and the budget was not enforced
    X, y = _data()
    est = DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3))
    with BudgetAccountant(epsilon=2.0, delta=1e-3) as acc:
        with warnings.catch_warnings(), pytest.raises(ValueError, match="fits failed"):
            warnings.simplefilter("ignore")
            cross_val_score(est, X, y, cv=5, n_jobs=2)
        assert acc.spent == (0.0, 0.0)
        cross_val_score(est, X, y, cv=2, n_jobs=1)  # in this process the default applies
        assert acc.spent[0] == 2.0
    # a file-backed default is shared: the workers spend from it, up to the budget
    with BudgetAccountant(epsilon=2.0, delta=1e-3, path=tmp_path / "l.json") as shared:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = cross_val_score(est, X, y, cv=5, n_jobs=2)
        assert np.isfinite(scores).sum() == 2 and shared.spent[0] == 2.0
    # no default chosen: workers fit freely (an unlimited budget has nothing to enforce)
    assert np.isfinite(cross_val_score(est, X, y, cv=3, n_jobs=2)).all()


def _spend_alternately(first: BudgetAccountant, second: BudgetAccountant) -> int:
    accepted = 0
    for i in range(4):
        try:
            (first if i % 2 == 0 else second).spend(1.0, 1e-6, mechanism=f"fit {i}")
            accepted += 1
        except BudgetError:
            pass
    return accepted


def test_every_spelling_of_a_ledger_file_shares_one_budget(tmp_path, monkeypatch):
    # review attack: one ledger opened through a symlink got its own lock file, and the first
    # save through the link replaced the link by a private copy: two ledgers, budget x2
    from pathlib import Path

    def opened_as_spelled(real: Path, alias: Path) -> tuple[BudgetAccountant, BudgetAccountant]:
        a = BudgetAccountant(epsilon=2.0, delta=1e-4, path=real)
        b = BudgetAccountant(epsilon=2.0, delta=1e-4, path=alias)
        b._path = alias  # positive control: the path as the caller spelled it (the old code)
        return a, b

    (tmp_path / "control").mkdir()
    real = tmp_path / "control" / "ledger.json"
    alias = tmp_path / "control" / "alias.json"
    alias.symlink_to(real)
    a, b = opened_as_spelled(real, alias)
    assert _spend_alternately(a, b) == 3  # the attack works on the unresolved spelling
    assert not alias.is_symlink()  # the link was replaced by a second ledger

    real = tmp_path / "ledger.json"
    alias = tmp_path / "alias.json"
    a = BudgetAccountant(epsilon=2.0, delta=1e-4, path=real)
    alias.symlink_to(real)
    monkeypatch.chdir(tmp_path)
    handles = [
        BudgetAccountant(epsilon=2.0, delta=1e-4, path=alias),
        BudgetAccountant(epsilon=2.0, delta=1e-4, path="ledger.json"),
        BudgetAccountant(epsilon=2.0, delta=1e-4, path=f"sub/../{real.name}"),
    ]
    for h in handles:
        assert h.path == a.path == real.resolve()
    assert _spend_alternately(a, handles[0]) == 2
    assert alias.is_symlink() and all(h.remaining()[0] == 0.0 for h in handles)
    with pytest.raises(BudgetError):
        handles[1].spend(0.5, 0.0)

    import os

    os.link(real, tmp_path / "hard.json")
    with pytest.raises(ValueError, match="hard links"):
        BudgetAccountant(epsilon=2.0, delta=1e-4, path=real)


def _interleaved_blocks(enter):
    """Thread A enters a block, B enters one, A fits 3 times and leaves, B fits 3 times.
    Returns (A's accepted fits, A's ledger ε, B's accepted fits, B's ledger ε); both budgets
    are ε = 1 and every fit is ε = 1."""
    import threading

    X, y = _data()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    out = {}

    def fits(name, acc):
        ok = 0
        for _ in range(3):
            try:
                DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3)).fit(X, y)
                ok += 1
            except BudgetError:
                pass
        out[name] = (ok, acc.spent[0])

    def thread_a():
        acc = BudgetAccountant(epsilon=1.0, delta=1e-3)
        with enter(acc):
            a_in.set()
            b_in.wait()
            fits("A", acc)
        a_out.set()

    def thread_b():
        a_in.wait()
        acc = BudgetAccountant(epsilon=1.0, delta=1e-3)
        with enter(acc):
            b_in.set()
            a_out.wait()
            fits("B", acc)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (*out["A"], *out["B"])


def test_with_blocks_in_two_threads_each_charge_their_own_budget():
    # review attack: `with` swapped one process-wide default. A's fits (inside A's block)
    # charged B's budget, and when A left it restored the unlimited default under B's feet:
    # B then ran 3 fits of ε = 1 against a budget of 1, charged nowhere.
    import contextlib

    @contextlib.contextmanager
    def process_wide(acc):  # positive control: the old __enter__/__exit__
        saved = BudgetAccountant._default
        BudgetAccountant._default = acc
        try:
            yield acc
        finally:
            BudgetAccountant._default = saved

    before = BudgetAccountant._default
    try:
        a_ok, a_spent, b_ok, b_spent = _interleaved_blocks(process_wide)
    finally:  # the old exits leave A's spent accountant as the default: undo that here
        BudgetAccountant._default = before
    # A's fit charged B's budget, and B's 3 fits went to the unlimited default
    assert (a_ok, a_spent, b_ok, b_spent) == (1, 0.0, 3, 1.0)
    assert _interleaved_blocks(lambda acc: acc) == (1, 1.0, 1, 1.0)


def test_worker_threads_see_the_one_open_block_and_refuse_when_ambiguous():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    X, y = _data()
    est = DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3))
    with BudgetAccountant(epsilon=1.0, delta=1e-3) as acc:
        with ThreadPoolExecutor(2) as pool:  # worker threads entered no block themselves
            done = [f.exception() for f in [pool.submit(clone(est).fit, X, y) for _ in range(3)]]
        assert sum(e is None for e in done) == 1 and acc.spent[0] == 1.0
        other_in, release = threading.Event(), threading.Event()

        def other_thread():
            with BudgetAccountant(epsilon=5.0, delta=1e-3):
                other_in.set()
                release.wait()

        t = threading.Thread(target=other_thread)
        t.start()
        other_in.wait()
        try:
            with ThreadPoolExecutor(1) as pool:
                err = pool.submit(clone(est).fit, X, y).exception()
            assert isinstance(err, BudgetError) and "ambiguous" in str(err)
            with pytest.raises(BudgetError, match="exceeded"):  # this thread: its own block
                clone(est).fit(X, y)
        finally:
            release.set()
            t.join()


def _fit_in_forked_child(est, X, y, queue):
    try:
        est.fit(X, y)
        queue.put("fitted")
    except BudgetError:
        queue.put("refused")


def test_forked_worker_without_a_chosen_default_gets_its_own_unlimited_one():
    # review finding: the parent's implicit unlimited default, copied by fork, refused every
    # fit in the child (docs: with no default chosen, workers use their own unlimited one)
    import multiprocessing

    X, y = _data()
    est = DPLogisticRegression(classes=C01, epsilon=1.0, bounds_X=(-3, 3))
    est.fit(X, y)  # creates this process's implicit default
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for chosen in (None, BudgetAccountant(epsilon=5.0, delta=1e-3)):
        queue = ctx.Queue()
        saved = BudgetAccountant._default
        if chosen is not None:
            chosen.set_default()  # positive control: a chosen in-memory default still refuses
        try:
            p = ctx.Process(target=_fit_in_forked_child, args=(est, X, y, queue))
            p.start()
            p.join(60)
        finally:
            BudgetAccountant._default = saved
        outcomes.append(queue.get(timeout=5))
    assert outcomes == ["fitted", "refused"]
