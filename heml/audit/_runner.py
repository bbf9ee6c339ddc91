"""Many small training runs, in parallel processes, with seeds, a progress bar and warnings kept.

Each run calls ``make_estimator(epsilon)`` for a fresh estimator, sets every ``random_state``
parameter it has (also inside pipelines) to a seed derived from the audit's ``random_state``, the
model, the kind of run and the run number, and fits. Runs are therefore independent draws of the
training randomness and the whole audit is reproducible. Estimators without a ``random_state``
draw their own randomness (independent too, not reproducible).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._signals import membership_signal

KIND_CODES = {"full": 0, "shadow": 1, "in": 2, "out": 3}


@dataclass
class Task:
    """A batch of runs of one kind for one ε (what one worker call does)."""

    model: int
    epsilon: float
    kind: str  # "full" | "shadow" | "in" | "out"
    runs: list[int]
    seeds: list[int]
    X: np.ndarray
    y: np.ndarray
    # shadow: rows of the keep matrix for these runs; statistics are taken on (X, y).
    # in/out: optional rows each run trains on (canary_subsample)
    keep: np.ndarray | None = None
    # in/out: the canary whose statistic is recorded
    probe_X: np.ndarray | None = None
    probe_y: np.ndarray | None = None
    # full: the test split
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    # in/out: "margin" (the probe's membership signal) or a release canary of heml.audit's
    # _release module, which reads the fitted model itself and needs the canary
    statistic: str = "margin"
    canary: Any = None


@dataclass
class TaskResult:
    model: int
    kind: str
    runs: list[int]
    values: list[Any]
    warnings: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    statistic: str = "margin"


def run_seed(root: np.random.SeedSequence, model: int, kind: str, run: int) -> int:
    ss = np.random.SeedSequence(root.entropy, spawn_key=(model, KIND_CODES[kind], run))
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def _budget_scope(estimator):
    """A fresh, unlimited default accountant while an audit's runs fit (heml.dp estimators).

    The runs are the auditor's simulations, not releases: spending the caller's default budget
    thousands of times would only exhaust it, and would happen in this process but not in worker
    processes. An accountant passed explicitly to the estimator is left alone.
    """
    params = estimator.get_params(deep=True)
    uses_default = any(k.split("__")[-1] == "accountant" and v is None for k, v in params.items())
    if uses_default:
        try:
            from heml.dp import BudgetAccountant
        except ImportError:
            return contextlib.nullcontext()
        return BudgetAccountant()
    return contextlib.nullcontext()


def _seed_params(estimator) -> list[str]:
    """Names of every ``random_state`` parameter, nested ones as ``step__random_state``."""
    return [k for k in estimator.get_params(deep=True) if k.split("__")[-1] == "random_state"]


def _seeded(estimator, seed: int, names: list[str]):
    for name in names:
        if "__" in name:
            estimator.set_params(**{name: seed})
        else:  # what BaseEstimator.set_params does for its own parameter, without re-validating
            setattr(estimator, name, seed)
    return estimator


def fit_one(make_estimator, epsilon: float, X, y, seed: int, names: list[str] | None = None):
    """``make_estimator(epsilon)`` seeded with ``seed`` and fitted on (X, y)."""
    estimator = make_estimator(epsilon)
    if not hasattr(estimator, "fit"):
        raise TypeError(
            f"make_estimator({epsilon}) returned {type(estimator).__name__}, not an estimator"
        )
    if names is None:
        names = _seed_params(estimator)
    return _seeded(estimator, seed, names).fit(X, y)


def execute(make_estimator: Callable[[float], Any], task: Task) -> TaskResult:
    """Run one task in this process (also the body of every worker process)."""
    values: list[Any] = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            probe = make_estimator(task.epsilon)
            names = _seed_params(probe)  # the same for all runs of a task
            scope = _budget_scope(probe)
        except Exception as exc:
            raise RuntimeError(
                f"make_estimator({task.epsilon}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        with scope:
            _run_all(make_estimator, task, names, values)
    counts = Counter(f"{w.category.__name__}: {w.message}" for w in caught)
    return TaskResult(
        task.model,
        task.kind,
        task.runs,
        values,
        counts,
        time.perf_counter() - start,
        task.statistic,
    )


def _run_all(make_estimator, task: Task, names: list[str], values: list) -> None:
    for i, (run, seed) in enumerate(zip(task.runs, task.seeds, strict=True)):
        try:
            if task.kind == "shadow":
                rows = task.keep[i]
                est = fit_one(make_estimator, task.epsilon, task.X[rows], task.y[rows], seed, names)
                values.append(membership_signal(est, task.X, task.y))
            elif task.kind in ("in", "out"):
                X, y = task.X, task.y
                if task.keep is not None:  # the canary audit's optional data resampling
                    X, y = X[task.keep[i]], y[task.keep[i]]
                if task.statistic != "margin":
                    values.append(_release_run(make_estimator, task, X, y, seed, names))
                    continue
                est = fit_one(make_estimator, task.epsilon, X, y, seed, names)
                values.append(float(membership_signal(est, task.probe_X, task.probe_y)[0]))
            else:
                est = fit_one(make_estimator, task.epsilon, task.X, task.y, seed, names)
                values.append(_describe(est, task))
        except Exception as exc:
            raise RuntimeError(
                f"make_estimator({task.epsilon}) failed in {task.kind} run {run}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _release_run(make_estimator, task: Task, X, y, seed: int, names: list[str]) -> float:
    """One release-canary run: the statistic of the fitted model, or the fit-error value (a
    fit that raises only in one world reveals the canary as surely as any attribute)."""
    from ._release import FIT_ERROR_STATISTIC, release_statistic

    try:
        est = fit_one(make_estimator, task.epsilon, X, y, seed, names)
    except Exception as exc:
        warnings.warn(
            f"a {task.statistic} canary fit raised {type(exc).__name__}",
            RuntimeWarning,
            stacklevel=2,
        )
        return FIT_ERROR_STATISTIC
    return release_statistic(task.statistic, est, task.canary)


def _final_step(estimator):
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _describe(est, task: Task) -> dict:
    """Utility of the model trained on the whole training set, and the guarantee it claims."""
    from sklearn.base import is_classifier

    final = _final_step(est)
    kind = type(final)
    info: dict = {
        "estimator": f"{kind.__module__.split('.')[0]}.{kind.__name__}",
        "dp_guarantee": _jsonable(getattr(final, "dp_guarantee_", None)),
        "params": {
            k: v
            for k, v in final.get_params(deep=False).items()
            if k in ("epsilon", "delta") and isinstance(v, int | float)
        },
    }
    if is_classifier(est):
        info["utility_metric"] = "accuracy"
        info["utility_train"] = float(est.score(task.X, task.y))
        info["utility_test"] = float(est.score(task.X_test, task.y_test))
    else:
        from sklearn.metrics import r2_score

        info["utility_metric"] = "r2"
        info["utility_train"] = float(r2_score(task.y, est.predict(task.X)))
        info["utility_test"] = float(r2_score(task.y_test, est.predict(task.X_test)))
    return info


def _jsonable(value):
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def run_tasks(
    make_estimator: Callable[[float], Any],
    tasks: list[Task],
    *,
    n_jobs: int | None,
    progress: bool,
    description: str = "heml audit",
) -> Iterator[TaskResult]:
    """Run tasks (sequentially when n_jobs is None or 1), yielding results as they finish."""
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    total = sum(len(t.runs) for t in tasks)
    bar = tqdm(
        total=total, desc=description, unit="fit", disable=not progress, leave=True, mininterval=0.5
    )
    try:
        if n_jobs in (None, 1) or len(tasks) <= 1:
            # thousands of small fits: threaded BLAS only adds overhead (measured: the test
            # audit took 1.3 s single-threaded, 1.4–2.6 s with two BLAS threads on a busy box);
            # joblib's workers get the same limit from joblib itself
            for task in tasks:
                with threadpool_limits(limits=1, user_api="blas"):
                    result = execute(make_estimator, task)
                bar.update(len(task.runs))
                yield result
            return
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for result in parallel(delayed(execute)(make_estimator, t) for t in tasks):
            bar.update(len(result.runs))
            yield result
    finally:
        bar.close()


def chunk(runs: list[int], size: int) -> list[list[int]]:
    return [runs[i : i + size] for i in range(0, len(runs), size)]
