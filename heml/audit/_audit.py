"""audit(): train shadow, canary and reference models for each ε and measure what leaks."""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri
from sklearn.base import is_classifier

from .._version import __version__
from ._attacks import ATTACK_TITLES, ATTACKS, balanced_keep, leave_one_out_scores
from ._dp_audit import Canary, EpsilonLowerBound, epsilon_lower_bound, make_canary, plant
from ._metrics import attack_metrics, roc_curve
from ._release import RELEASE_CANARIES, extreme_canary, label_canary
from ._report import THREAT_MODEL, AuditReport, ModelAudit
from ._runner import Task, TaskResult, chunk, run_seed, run_tasks

DEFAULT_DELTA = 1e-5
#: FPR levels at which the exact ROC is stored in the report
ROC_POINTS = 300
#: label shuffles for the no-leakage reference of the per-record effect sizes
NULL_PERMUTATIONS = 20
#: runs per worker call: large enough to amortise process overhead, small for a smooth bar
CHUNK = 16
#: runs per world of each release canary (label set, extreme record) in audit()
RELEASE_RUNS = 200


def _check_X(X, name: str) -> np.ndarray:
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return A


def _check_y(y, n: int, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} values for {n} rows")
    return a


def _check_epsilons(epsilons) -> list[float]:
    if isinstance(epsilons, int | float):
        epsilons = [epsilons]
    eps = [float(e) for e in epsilons]
    if not eps:
        raise ValueError("epsilons is empty")
    for e in eps:
        if not e > 0:
            raise ValueError(f"every ε must be > 0 (or inf for non-private), got {e}")
    if len(set(eps)) != len(eps):
        raise ValueError(f"epsilons has duplicates: {eps}")
    return eps


@dataclass
class CanaryAudit:
    """Result of :func:`canary_audit`: the ε lower bound, the canary and the raw statistics."""

    bound: EpsilonLowerBound
    canary: Canary
    scores_in: np.ndarray
    scores_out: np.ndarray

    @property
    def effect_size(self) -> float:
        """(mean_in − mean_out) / pooled sd of the canary statistic (inf if deterministic)."""
        d = float(self.scores_in.mean() - self.scores_out.mean())
        sd = math.sqrt(0.5 * (self.scores_in.var(ddof=1) + self.scores_out.var(ddof=1)))
        if sd == 0.0:
            return 0.0 if d == 0.0 else math.copysign(math.inf, d)
        return d / sd

    def to_dict(self) -> dict:
        return {
            **self.bound.to_dict(),
            "canary": self.canary.to_dict(),
            "runs_in": int(self.scores_in.size),
            "runs_out": int(self.scores_out.size),
            "effect_size": self.effect_size,
            "mean_in": float(self.scores_in.mean()),
            "mean_out": float(self.scores_out.mean()),
        }


def _canary_tasks(
    model, epsilon, X, y, canary, runs, root, subsample=None, statistic="margin"
) -> list[Task]:
    X_in, y_in = plant(X, y, canary, world="in")
    X_out, y_out = plant(X, y, canary, world="out")
    px = canary.x[None, :]
    py = np.array([canary.y], dtype=object if isinstance(canary.y, str) else None)
    masks = {"in": None, "out": None}
    if subsample is not None:
        # every run: the replaced row (canary or original) plus a fresh random share of the rest;
        # the same law in both worlds, so the pair stays neighbouring run by run
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(model, 99)))
        for kind in masks:
            m = rng.random((runs, X.shape[0])) < subsample
            m[:, canary.replaced_index] = True
            masks[kind] = m
    tasks = []
    # each statistic draws its own training randomness
    seed_model = model + _STATISTIC_SEEDS.get(statistic, 0)
    for kind, (XX, yy) in (("in", (X_in, y_in)), ("out", (X_out, y_out))):
        for part in chunk(list(range(runs)), CHUNK):
            seeds = [run_seed(root, seed_model, kind, r) for r in part]
            keep = None if masks[kind] is None else masks[kind][part]
            tasks.append(
                Task(
                    model,
                    epsilon,
                    kind,
                    part,
                    seeds,
                    XX,
                    yy,
                    keep=keep,
                    probe_X=px,
                    probe_y=py,
                    statistic=statistic,
                    canary=None if statistic == "margin" else canary,
                )
            )
    return tasks


_STATISTIC_SEEDS = {name: 10_000 * (i + 1) for i, name in enumerate(RELEASE_CANARIES)}


def _check_subsample(subsample) -> float | None:
    if subsample is None:
        return None
    if not 0.0 < subsample < 1.0:
        raise ValueError(f"canary subsample must be in (0, 1) or None, got {subsample}")
    return float(subsample)


def canary_audit(
    make_estimator: Callable[[float], Any],
    X,
    y,
    *,
    epsilon: float,
    delta: float = DEFAULT_DELTA,
    runs: int = 500,
    canary: Canary | None = None,
    alpha: float = 0.05,
    subsample: float | None = None,
    statistic: str = "margin",
    random_state: int | None = 0,
    n_jobs: int | None = None,
    progress: bool = False,
) -> CanaryAudit:
    """Empirical ε lower bound of ``make_estimator(epsilon)`` on (X, y) with a planted canary.

    Trains ``runs`` models in each world of the canary pair (the training set with one row
    replaced, see :class:`Canary`), records the canary's statistic and applies
    :func:`epsilon_lower_bound` (threshold chosen on half the runs, Clopper–Pearson on the rest).

    Parameters
    ----------
    make_estimator : callable
        ``make_estimator(epsilon)`` returns an unfitted estimator.
    X, y : array-like
        The training set (fixed across runs; only the training randomness varies).
    epsilon : float
        Passed to ``make_estimator``.
    delta : float, default=1e-5
        δ of the guarantee being audited.
    runs : int, default=500
        Runs per world.
    canary : Canary, optional
        Default: :func:`make_canary` (an outlier on the least-variance direction, with opposite
        labels in the two worlds).
    alpha : float, default=0.05
        The bound holds with probability ≥ 1 − α for an (ε, δ)-DP training procedure.
    subsample : float, optional
        If set, every run trains on the replaced row plus a fresh random share ``subsample`` of
        the other rows, the same law in both worlds. The bound stays valid (a mixture of
        neighbouring pairs is as private as each pair) but is weaker; it shows that what
        separates the worlds survives data randomness, not only training randomness. Use it for
        deterministic (non-private) procedures, whose fixed-data audit just hits the ceiling.
    statistic : {"margin", "label_set", "extreme_record"}, default="margin"
        What each run records. "margin": the canary's membership signal (default canary:
        :func:`make_canary`). "label_set" and "extreme_record": the release canaries of
        ``heml.audit._release``, which read the fitted model's class list or exported bounds
        (default canaries: a fresh label, a far outlier); they catch class lists and bounds
        read from the data, which move no score.
    random_state, n_jobs, progress
        Seeds, worker processes (None: this process), progress bar.
    """
    X = _check_X(X, "X")
    y = _check_y(y, X.shape[0], "y")
    if runs < 4:
        raise ValueError(f"runs must be at least 4, got {runs}")
    if statistic != "margin" and statistic not in RELEASE_CANARIES:
        known = ", ".join(["margin", *RELEASE_CANARIES])
        raise ValueError(f"statistic must be one of {known}; got {statistic!r}")
    if canary is None:
        probe = _probe(make_estimator, epsilon)
        classifier = is_classifier(probe)
        canary = _default_canary(
            statistic, X, y, classifier, random_state, _declared_classes(probe)
        )
        if canary is None:
            raise ValueError("the label_set canary needs non-boolean class labels")
    root = np.random.SeedSequence(random_state)
    tasks = _canary_tasks(
        0, epsilon, X, y, canary, runs, root, _check_subsample(subsample), statistic
    )
    sides: dict[str, np.ndarray] = {"in": np.empty(runs), "out": np.empty(runs)}
    for res in run_tasks(make_estimator, tasks, n_jobs=n_jobs, progress=progress):
        sides[res.kind][res.runs] = res.values
    bound = epsilon_lower_bound(sides["in"], sides["out"], delta=delta, alpha=alpha)
    return CanaryAudit(bound, canary, sides["in"], sides["out"])


def _declared_classes(estimator):
    """The label set an estimator (or a pipeline's step) declares, or None."""
    for name, value in estimator.get_params(deep=True).items():
        if name.split("__")[-1] == "classes" and value is not None:
            return list(value)
    return None


def _default_canary(
    statistic: str, X, y, classifier: bool, random_state, classes=None
) -> Canary | None:
    if statistic == "margin":
        return make_canary(X, y, classifier=classifier, random_state=random_state)
    if statistic == "label_set":
        if not classifier:
            return None
        return label_canary(X, y, classes=classes, random_state=random_state)
    return extreme_canary(X, y, classifier=classifier, random_state=random_state)


def audit(
    make_estimator: Callable[[float], Any],
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    epsilons: Sequence[float] = (1.0, math.inf),
    n_shadow: int = 64,
    canaries: bool = True,
    canary_runs: int = 500,
    canary_subsample: float | None = None,
    release_canaries: bool = True,
    release_runs: int = RELEASE_RUNS,
    delta: float | None = None,
    alpha: float = 0.05,
    fix_variance: bool | None = None,
    n_bootstrap: int = 200,
    n_vulnerable: int = 10,
    random_state: int | None = 0,
    n_jobs: int | None = None,
    progress: bool = True,
) -> AuditReport:
    """Privacy audit of a training procedure at several ε: membership inference and an ε bound.

    For every ε in ``epsilons``:

    * **utility**: ``make_estimator(ε)`` fitted on the training set, scored on the test set;
    * **membership inference**: ``n_shadow + 1`` models, each trained on a random half of the
      audit pool (training ∪ test set; every record in exactly half the models). Each model in
      turn is the target and the others its shadows; the LOSS/margin threshold attack and LiRA
      (offline, online) score every record, and the metrics pool all targets;
    * **DP audit** (``canaries=True``): ``canary_runs`` models in each of two neighbouring
      worlds, the training set with one record replaced by a canary that carries one label or
      the opposite one (:func:`make_canary`); the canary's statistic gives an ε lower bound at
      confidence 1 − α, reported against the claimed ε;
    * **release canaries** (``release_canaries=True``): ``release_runs`` models per world for a
      training row relabelled with a fresh label (classifiers) and for a row replaced by a far
      outlier; their statistics read the released class list and exported bounds, which the
      margin cannot see (a class list or bounds taken from the data). Each gives an ε lower
      bound too, and any bound above the claim fails the audit.

    Parameters
    ----------
    make_estimator : callable
        ``make_estimator(epsilon)`` returns an unfitted scikit-learn estimator (or Pipeline);
        ``epsilon=inf`` means non-private. Its ``random_state`` parameters are set per run.
    X_train, y_train : array-like of shape (n, d), (n,)
        The private training data.
    X_test, y_test : array-like of shape (m, d), (m,)
        Held-out data from the same distribution (utility; non-members in the audit pool).
    epsilons : sequence of float, default=(1.0, inf)
        Privacy levels to audit; ``inf`` is the non-private baseline.
    n_shadow : int, default=64
        Shadow models per ε for LiRA (n_shadow + 1 models are trained).
    canaries : bool, default=True
        Run the canary-based DP audit.
    canary_runs : int, default=500
        Training runs per world for the ε lower bound.
    canary_subsample : float, optional
        Train each canary run on a random share of the training set (see :func:`canary_audit`);
        default: the whole training set every run (the standard, strongest audit).
    release_canaries : bool, default=True
        Run the label-set and extreme-record canaries (see ``heml.audit._release``).
    release_runs : int, default=200
        Training runs per world for each release canary (≥ 4). A leak they detect is usually
        deterministic, and 100 held-out runs a world certify up to ε ≈ 3.3.
    delta : float, optional
        δ for the ε lower bounds. Default: each model's claimed δ (``dp_guarantee_`` or its
        ``delta`` parameter); for non-private models the smallest claimed δ, else 1e-5.
    alpha : float, default=0.05
        1 − confidence of the ε lower bounds.
    fix_variance : bool, optional
        LiRA variance pooled over records (None: pooled unless ≥ 32 shadows a side per record).
    n_bootstrap : int, default=200
        Bootstrap replicates (over records) for the metric confidence intervals.
    n_vulnerable : int, default=10
        Most exposed training records to list per model.
    random_state : int or None, default=0
        Seeds every split and training run (None: fresh entropy).
    n_jobs : int, optional
        Worker processes (None or 1: this process; -1: all cores). ``make_estimator`` must then
        be picklable by cloudpickle (lambdas and closures are).
    progress : bool, default=True
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    AuditReport
    """
    t0 = time.perf_counter()
    Xtr = _check_X(X_train, "X_train")
    Xte = _check_X(X_test, "X_test")
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"X_train has {Xtr.shape[1]} features but X_test has {Xte.shape[1]}")
    ytr = _check_y(y_train, Xtr.shape[0], "y_train")
    yte = _check_y(y_test, Xte.shape[0], "y_test")
    eps_list = _check_epsilons(epsilons)
    if n_shadow < 2:
        raise ValueError(f"n_shadow must be at least 2, got {n_shadow}")
    if canaries and canary_runs < 4:
        raise ValueError(f"canary_runs must be at least 4, got {canary_runs}")
    if release_canaries and release_runs < 4:
        raise ValueError(f"release_runs must be at least 4, got {release_runs}")
    canary_subsample = _check_subsample(canary_subsample)
    if delta is not None and not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    probe = _probe(make_estimator, eps_list[0])
    classifier = is_classifier(probe)
    declared = _declared_classes(probe)

    X_pool = np.vstack([Xtr, Xte])
    if ytr.dtype.kind in "USO" or yte.dtype.kind in "USO":
        y_pool = np.concatenate([ytr.astype(object), yte.astype(object)])
    else:
        y_pool = np.concatenate([ytr, yte])
    n_train, n_pool = Xtr.shape[0], X_pool.shape[0]
    n_models = n_shadow + 1
    rng = np.random.default_rng(random_state)
    labels = y_pool.astype(str) if classifier else None
    keep = _draw_keep(n_models, n_pool, labels, rng)
    root = np.random.SeedSequence(random_state)
    canary = (
        make_canary(Xtr, ytr, classifier=classifier, random_state=random_state)
        if canaries
        else None
    )
    release: dict[str, Canary] = {}
    if release_canaries:
        for name in RELEASE_CANARIES:
            c = _default_canary(name, Xtr, ytr, classifier, random_state, declared)
            if c is not None:
                release[name] = c

    tasks: list[Task] = []
    for mi, eps in enumerate(eps_list):
        tasks.append(
            Task(
                mi,
                eps,
                "full",
                [0],
                [run_seed(root, mi, "full", 0)],
                Xtr,
                ytr,
                X_test=Xte,
                y_test=yte,
            )
        )
        for part in chunk(list(range(n_models)), CHUNK // 2):
            seeds = [run_seed(root, mi, "shadow", r) for r in part]
            tasks.append(Task(mi, eps, "shadow", part, seeds, X_pool, y_pool, keep=keep[part]))
        if canary is not None:
            tasks.extend(
                _canary_tasks(mi, eps, Xtr, ytr, canary, canary_runs, root, canary_subsample)
            )
        if math.isfinite(eps):  # a non-private model claims nothing a release could break
            for name, c in release.items():
                tasks.extend(_canary_tasks(mi, eps, Xtr, ytr, c, release_runs, root, None, name))

    results: dict[int, dict[str, Any]] = {
        mi: {
            "stats": np.full((n_models, n_pool), np.nan),
            "in": np.full(canary_runs, np.nan),
            "out": np.full(canary_runs, np.nan),
            "release": {
                name: {"in": np.full(release_runs, np.nan), "out": np.full(release_runs, np.nan)}
                for name in release
            },
            "warnings": Counter(),
            "seconds": 0.0,
        }
        for mi in range(len(eps_list))
    }
    for res in run_tasks(make_estimator, tasks, n_jobs=n_jobs, progress=progress):
        _store(results[res.model], res)

    # δ for the bounds: claimed where there is a claim
    infos = {mi: results[mi]["full"] for mi in results}
    claimed = {mi: _claim(eps_list[mi], infos[mi]) for mi in results}
    private_deltas = [c[1] for c in claimed.values() if c[2] and c[1]]
    fallback_delta = delta if delta is not None else min(private_deltas, default=DEFAULT_DELTA)

    groups = np.tile(np.arange(n_pool), n_models)
    models = []
    for mi, eps in enumerate(eps_list):
        r = results[mi]
        claim_eps, claim_delta, private, source = claimed[mi]
        scores, pooled = leave_one_out_scores(r["stats"], keep, fix_variance=fix_variance)
        attacks = {}
        for name in ATTACKS:
            flat = scores[name].ravel()
            met = attack_metrics(
                flat,
                keep.ravel(),
                groups=groups,
                n_bootstrap=n_bootstrap,
                random_state=None if random_state is None else random_state + mi,
            )
            fpr, tpr = roc_curve(flat, keep.ravel()).sample(ROC_POINTS)
            met["title"] = ATTACK_TITLES[name]
            met["roc"] = {
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "sampling": f"exact TPR at FPR 0 and {ROC_POINTS} log-spaced levels",
            }
            attacks[name] = met
        canary_result = None
        if canary is not None:
            audit_delta = delta if delta is not None else (claim_delta or fallback_delta)
            bound = epsilon_lower_bound(r["in"], r["out"], delta=audit_delta, alpha=alpha)
            ca = CanaryAudit(bound, canary, r["in"], r["out"]).to_dict()
            ca["passed"] = None if math.isinf(claim_eps) else bool(bound.epsilon_lb <= claim_eps)
            canary_result = ca
        release_result = None
        if release and math.isfinite(eps):
            release_result = {}
            audit_delta = delta if delta is not None else (claim_delta or fallback_delta)
            for name, c in release.items():
                sides = r["release"][name]
                bound = epsilon_lower_bound(
                    sides["in"], sides["out"], delta=audit_delta, alpha=alpha
                )
                ca = CanaryAudit(bound, c, sides["in"], sides["out"]).to_dict()
                ca["statistic"] = RELEASE_CANARIES[name]
                ok = bound.epsilon_lb <= claim_eps
                ca["passed"] = None if math.isinf(claim_eps) else bool(ok)
                release_result[name] = ca
        vulnerable, null_max = _vulnerable(r["stats"], keep, n_train, n_vulnerable, rng)
        info = infos[mi]
        models.append(
            ModelAudit(
                label=_label(eps),
                requested_epsilon=eps,
                claimed_epsilon=claim_eps,
                claimed_delta=claim_delta,
                private=private,
                claim_source=source,
                estimator=info["estimator"],
                dp_guarantee=info["dp_guarantee"],
                utility_metric=info["utility_metric"],
                utility_train=info["utility_train"],
                utility_test=info["utility_test"],
                attacks=attacks,
                lira_fix_variance=pooled,
                canary=canary_result,
                release_canaries=release_result,
                vulnerable=vulnerable,
                vulnerable_null_max_effect=null_max,
                warnings=dict(r["warnings"].most_common()),
                fit_seconds=r["seconds"],
            )
        )

    config = {
        "epsilons": eps_list,
        "n_shadow": n_shadow,
        "n_models": n_models,
        "canaries": canaries,
        "canary_runs": canary_runs if canaries else 0,
        "canary_subsample": canary_subsample,
        "release_canaries": list(release),
        "release_runs": release_runs if release else 0,
        "delta": delta,
        "alpha": alpha,
        "confidence": 1.0 - alpha,
        "fix_variance": fix_variance,
        "n_bootstrap": n_bootstrap,
        "random_state": random_state,
        "attacks": list(ATTACKS),
        "statistic": "margin (logit of the true class)" if classifier else "-|residual|",
        "neighbouring_relation": "replace-one",
    }
    data = {
        "task": "classification" if classifier else "regression",
        "n_train": n_train,
        "n_test": int(Xte.shape[0]),
        "n_features": int(Xtr.shape[1]),
        "n_pool": n_pool,
        "shadow_train_size": float(keep.sum(axis=1).mean()),
    }
    if classifier:
        data["classes"] = sorted({_plain(c) for c in y_pool.tolist()}, key=str)
    return AuditReport(
        models=models,
        config=config,
        data=data,
        threat_model=dict(THREAT_MODEL),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        heml_version=__version__,
        wall_seconds=time.perf_counter() - t0,
    )


def _probe(make_estimator, epsilon: float):
    try:
        est = make_estimator(epsilon)
    except Exception as exc:
        raise RuntimeError(
            f"make_estimator({epsilon}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not (hasattr(est, "fit") and hasattr(est, "get_params")):
        raise TypeError(
            f"make_estimator({epsilon}) must return an unfitted scikit-learn estimator, "
            f"got {type(est).__name__}"
        )
    return est


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _label(eps: float) -> str:
    return "non-private (ε=∞)" if math.isinf(eps) else f"ε={eps:g}"


def _draw_keep(n_models: int, n_pool: int, labels, rng: np.random.Generator) -> np.ndarray:
    """Balanced membership matrix; for classifiers every model sees at least two classes.

    Not every class: a shadow model trained without any record of a rare class is what shows
    whether the model's class list depends on the training data (its records then score
    ``UNSEEN_LABEL_MARGIN`` in the models that did not train on them).
    """
    for _ in range(100):
        keep = balanced_keep(n_models, n_pool, rng)
        if labels is None or all(np.unique(labels[row]).size >= 2 for row in keep):
            return keep
    raise ValueError(
        "could not split the data so that every shadow model sees two classes; "
        "the minority classes have too few records"
    )


def _store(r: dict, res: TaskResult) -> None:
    r["warnings"].update(res.warnings)
    r["seconds"] += res.seconds
    if res.kind == "shadow":
        r["stats"][res.runs] = np.vstack(res.values)
    elif res.kind in ("in", "out") and res.statistic != "margin":
        r["release"][res.statistic][res.kind][res.runs] = res.values
    elif res.kind in ("in", "out"):
        r[res.kind][res.runs] = res.values
    else:
        r["full"] = res.values[0]


def _claim(requested: float, info: dict) -> tuple[float, float | None, bool, str]:
    """(claimed ε, claimed δ, private, where the claim comes from)."""
    g = info.get("dp_guarantee") or {}
    params = info.get("params") or {}
    if g:
        eps = g.get("epsilon", requested)
        eps = math.inf if eps in (None, "inf", "Infinity") else float(eps)
        d = g.get("delta", params.get("delta"))
        private = bool(g.get("private", math.isfinite(eps)))
        return eps, (float(d) if d is not None and private else None), private, "dp_guarantee_"
    if math.isfinite(requested):
        d = params.get("delta")
        return requested, (float(d) if d is not None else None), True, "make_estimator argument"
    return math.inf, None, False, "make_estimator argument"


def _vulnerable(stats, keep, n_train: int, k: int, rng) -> tuple[list[dict], float]:
    """Training records whose statistic moves most when they are trained on.

    Effect size d = (mean_in − mean_out) / sd over the models that did / did not train on the
    record (sd: the two per-record variances averaged). Under a Gaussian model of the statistic,
    an attacker targeting that record reaches TPR = Φ(d − z₀.₉₉) at 1 % FPR. With few models
    these estimates are noisy, so a no-leakage reference is returned too: the 95th percentile,
    over 20 shuffles of each record's membership labels, of the largest effect among the
    training records. Rows above it are flagged ``exceeds_null``.
    """

    def effects(K):
        cnt_in, cnt_out = K.sum(0), (~K).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            m_in = (stats * K).sum(0) / cnt_in
            m_out = (stats * ~K).sum(0) / cnt_out
            v_in = (((stats - m_in) ** 2) * K).sum(0) / np.maximum(cnt_in - 1, 1)
            v_out = (((stats - m_out) ** 2) * ~K).sum(0) / np.maximum(cnt_out - 1, 1)
            sd = np.sqrt(0.5 * (v_in + v_out))
            d = np.where(sd > 0, (m_in - m_out) / sd, np.where(m_in > m_out, np.inf, 0.0))
        return d, m_in, m_out

    d, m_in, m_out = effects(keep)
    null_max = []
    for _ in range(NULL_PERMUTATIONS):
        shuffled = rng.permuted(keep, axis=0)  # each record's labels shuffled over the models
        null_max.append(np.max(effects(shuffled)[0][:n_train]))
    null = float(np.quantile(null_max, 0.95))
    train_d = d[:n_train]
    order = np.argsort(-train_d, kind="stable")[:k]
    z99 = float(ndtri(0.99))
    rows = []
    for i in order:
        s_in, s_out = stats[keep[:, i], i], stats[~keep[:, i], i]
        # per-record AUC: P(stat_in > stat_out) + ½ P(equal)
        gt = (s_in[:, None] > s_out[None, :]).mean()
        eq = (s_in[:, None] == s_out[None, :]).mean()
        rows.append(
            {
                "train_index": int(i),
                "effect_size": float(d[i]),
                "auc": float(gt + 0.5 * eq),
                "tpr_at_1pct_fpr_gaussian": float(ndtr(d[i] - z99)),
                "exceeds_null": bool(d[i] > null),
                "mean_in": float(m_in[i]),
                "mean_out": float(m_out[i]),
            }
        )
    return rows, null
