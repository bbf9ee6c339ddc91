"""``heml audit``: train models at several ε on a CSV file and write a privacy report.

Wired into ``heml/cli.py`` with ``register(subparsers)``; ``run(args)`` returns the exit code:
0 the report is written and no private model failed its audit; 4 the report is written and some
private model's ε lower bound exceeds its claimed ε (a failed audit); 2 invalid input or
arguments; 1 training failed. Errors are one line on stderr.

The models are the ones ``heml train`` fits, with the same options (``--bounds``,
``--shared-scale``, ``--target-bounds``, ``--delta``, ``--drop``, ``--task``):
``heml.dp.DPLogisticRegression`` or
``DPLinearRegression`` at every ε, ``inf`` included (the contract's non-private fit). Without
``heml.dp`` only ``--epsilons inf`` works, with scikit-learn's estimators behind a scaler.
``python -m heml.audit.cli audit …`` runs the same command without ``heml/cli.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._csvdata import (
    InvalidInput,
    check_bounds_arg,
    checked_task,
    numeric_features,
    parse_feature_bounds,
    parse_pair,
    read_table,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_AUDIT_FAILED = 0, 1, 2, 4
_Invalid = InvalidInput  # bad arguments or data (exit 2)
_pair = parse_pair


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "audit",
        help="audit the privacy of models trained at several ε (membership inference, DP audit)",
        description=(
            "Train a model at each ε on a CSV file, attack it (LOSS threshold, LiRA offline and "
            "online, with shadow models) and audit its DP claim with canaries; write audit.json, "
            "summary.md and PNG figures to the output directory."
        ),
    )
    p.add_argument("data", help="CSV file with a header row")
    p.add_argument("--target", required=True, help="name of the column to predict")
    p.add_argument(
        "--epsilons",
        default="0.5,1,2,5,inf",
        help="comma-separated ε values; inf is the non-private model (default: %(default)s)",
    )
    p.add_argument("--delta", type=float, default=1e-5, help="δ of the private fits (%(default)s)")
    p.add_argument("-o", "--output", required=True, help="directory to write the report to")
    p.add_argument("--drop", default="", help="comma-separated columns to drop (identifiers)")
    p.add_argument("--task", choices=("auto", "regression", "classification"), default="auto")
    p.add_argument(
        "--bounds",
        help="public bounds of the features: LO,HI for every one, or FILE.json mapping each "
        "feature column to [LO, HI]",
    )
    p.add_argument(
        "--shared-scale",
        action="store_true",
        help="declare that all features share one unit, as heml train --shared-scale: the "
        "private fits estimate one DP box for all features (not with --bounds)",
    )
    p.add_argument("--target-bounds", help="public bounds of the target (regression): LO,HI")
    p.add_argument("--test-size", type=float, default=0.3, help="held-out share (%(default)s)")
    p.add_argument("--n-shadow", type=int, default=64, help="shadow models per ε (%(default)s)")
    p.add_argument(
        "--canary-runs", type=int, default=500, help="training runs per world (%(default)s)"
    )
    p.add_argument("--no-canaries", action="store_true", help="skip the DP (canary) audit")
    p.add_argument(
        "--release-runs",
        type=int,
        default=200,
        help="training runs per world of the label-set and extreme-record canaries, which read "
        "the released class list and bounds; 0 skips them (%(default)s)",
    )
    p.add_argument(
        "--classes",
        help="the public label set LABEL,LABEL,... given to the classifier (without it, a "
        "class list read from the data is what the label-set canary flags)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="1 − confidence of ε bounds (%(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the split, subsets and training runs")
    p.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: one per core)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    try:
        return _run(args)
    except _Invalid as exc:
        return _fail(str(exc), EXIT_INVALID)
    except Exception as exc:  # training failed after validation
        # the audit's RuntimeErrors already name the run and the underlying error
        message = str(exc) if type(exc) is RuntimeError else f"{type(exc).__name__}: {exc}"
        return _fail(message, EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    print(f"heml audit: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _epsilons(text: str) -> list[float]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            e = float(part)
        except ValueError:
            raise _Invalid(
                f"--epsilons: {part!r} is not a number (use inf for non-private)"
            ) from None
        if not e > 0:
            raise _Invalid(f"--epsilons: every ε must be > 0 (or inf), got {part!r}")
        out.append(e)
    if not out:
        raise _Invalid("--epsilons is empty")
    if len(set(out)) != len(out):
        raise _Invalid(f"--epsilons has duplicates: {text!r}")
    return out


def _have_dp() -> bool:
    try:
        import heml.dp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class EstimatorFactory:
    """``make_estimator(ε)`` for the CLI: what ``heml train`` would fit (picklable)."""

    task: str
    delta: float
    bounds: Any  # (lo, hi): scalars or per-feature arrays; None or a PrivateBounds: DP-estimated
    target_bounds: tuple[float, float] | None
    use_dp: bool
    classes: tuple | None = None  # the public label set, set on the classifier if given

    def __call__(self, epsilon: float):
        if self.use_dp:
            from heml.dp._public_scaling import cli_estimator

            est = cli_estimator(
                self.task,
                epsilon=epsilon,
                delta=self.delta,
                bounds=self.bounds,
                target_bounds=self.target_bounds,
                classes=self.classes,
            )
            if self.classes is not None:
                est.set_params(**{name: list(self.classes) for name in _classes_params(est)})
            return est
        if math.isfinite(epsilon):
            raise RuntimeError(f"ε={epsilon:g} needs heml.dp, which is not installed")
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.task == "regression":
            return make_pipeline(StandardScaler(), LinearRegression())
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _classes_params(estimator) -> list[str]:
    """The estimator's ``classes`` parameters (``model__classes`` inside a pipeline)."""
    return [k for k in estimator.get_params(deep=True) if k.split("__")[-1] == "classes"]


def _parse_classes(text: str | None, y) -> tuple | None:
    """``--classes`` as labels of the target's type (integers for an integer column)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2 or any(not p for p in parts) or len(set(parts)) != len(parts):
        raise _Invalid(f"--classes must list two or more distinct labels, got {text!r}")
    if np.asarray(y).dtype.kind in "iu":
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise _Invalid(f"--classes: the target holds integers, got {text!r}") from None
    return tuple(parts)


def _load(args):
    path = Path(args.data)
    df, y = read_table(path, args.target, args.drop, name=Path(path).name)
    X = numeric_features(df)
    bounds = parse_feature_bounds(args.bounds, df.columns)
    if args.shared_scale:  # the user's public declaration, as heml train --shared-scale
        try:
            from heml.dp import PrivateBounds
        except ImportError:
            raise _Invalid("--shared-scale needs the DP estimators (heml.dp)") from None
        bounds = PrivateBounds(shared_scale=True)
    if y.isna().any():
        raise _Invalid(f"target {args.target!r} has missing values")
    task = checked_task(y, args.target, args.task)
    if task == "regression":
        yv = y.to_numpy(dtype=np.float64)
    else:
        yv = y.to_numpy()
        if yv.dtype.kind not in "iub":
            yv = yv.astype(object)
    return X, yv, task, path, bounds


def _run(args) -> int:
    t0 = time.perf_counter()
    epsilons = _epsilons(args.epsilons)
    check_bounds_arg(args.bounds)
    if args.shared_scale and args.bounds is not None:
        raise _Invalid(
            f"--shared-scale and --bounds {args.bounds} cannot be combined: --shared-scale asks "
            "for one box for all features estimated with DP, --bounds gives the bounds itself; "
            "drop one of them"
        )
    target_bounds = _pair(args.target_bounds, "--target-bounds")
    if not 0.0 < args.test_size < 1.0:
        raise _Invalid(f"--test-size must be in (0, 1), got {args.test_size}")
    if args.n_shadow < 2:
        raise _Invalid(f"--n-shadow must be at least 2, got {args.n_shadow}")
    if not args.no_canaries and args.canary_runs < 4:
        raise _Invalid(f"--canary-runs must be at least 4, got {args.canary_runs}")
    if args.release_runs != 0 and args.release_runs < 4:
        raise _Invalid(f"--release-runs must be 0 or at least 4, got {args.release_runs}")
    if not 0.0 < args.alpha < 1.0:
        raise _Invalid(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0.0 < args.delta < 1.0:
        raise _Invalid(f"--delta must be in (0, 1), got {args.delta}")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise _Invalid(f"--jobs must be at least 1, got {args.jobs}")
    use_dp = _have_dp()
    finite = [e for e in epsilons if math.isfinite(e)]
    if finite and not use_dp:
        raise _Invalid(
            f"ε={finite[0]:g} needs the DP estimators (heml.dp), which this installation lacks; "
            "only --epsilons inf can be audited without them"
        )
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise _Invalid(f"-o: {str(out)!r} exists and is not a directory")
    try:  # a missing folder is made, as the README's `-o models/NAME.json` expects
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Invalid(f"-o: cannot create folder {str(out.parent)!r}: {exc.strerror}") from None

    X, y, task, path, bounds = _load(args)
    classes = _parse_classes(args.classes, y) if task == "classification" else None
    if args.classes is not None and task != "classification":
        raise _Invalid("--classes is for classification targets")
    if classes is not None and not (use_dp and _classes_params(_dp_classifier())):
        raise _Invalid(
            "--classes needs a heml.dp whose DPLogisticRegression takes classes=; this one "
            "reads the class list from the data"
        )
    if classes is None and task == "classification" and use_dp:
        # without --classes the shadow and canary models all get the audited data's own label
        # set, as a declared --classes would fix it: the audit tests the mechanism with public
        # classes (the audit report itself is not DP; docs/audit.md)
        classes = tuple(np.unique(y).tolist())
    n_pool = X.shape[0]
    if finite and args.delta * (n_pool / 2) >= 1.0:
        raise _Invalid(
            f"--delta={args.delta:g} is not below 1/n for the ≈{n_pool // 2} records each shadow "
            "model trains on; use a smaller --delta"
        )

    from sklearn.model_selection import train_test_split

    stratify = None
    if task == "classification":
        _, counts = np.unique(y.astype(str), return_counts=True)
        stratify = y if counts.min() >= 2 else None
    try:
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=args.test_size, random_state=args.seed, stratify=stratify
        )
    except ValueError as exc:
        raise _Invalid(f"cannot split {str(path)!r} into train and test: {exc}") from None

    from ._audit import audit

    factory = EstimatorFactory(task, args.delta, bounds, target_bounds, use_dp, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report keeps the warnings raised while training
        try:
            report = audit(
                factory,
                Xtr,
                ytr,
                Xte,
                yte,
                epsilons=epsilons,
                n_shadow=args.n_shadow,
                canaries=not args.no_canaries,
                canary_runs=args.canary_runs,
                release_canaries=args.release_runs > 0,
                release_runs=max(args.release_runs, 4),
                alpha=args.alpha,
                random_state=args.seed,
                n_jobs=jobs,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    out.mkdir(exist_ok=True)
    written = [report.save(out / "audit.json")]
    figures = {}
    try:
        written.append(report.plot_roc(out / "roc.png"))
        written.append(report.plot_privacy_utility(out / "privacy_utility.png"))
        figures = {"ROC per model": "roc.png", "Privacy–utility": "privacy_utility.png"}
    except ImportError as exc:
        print(f"heml audit: warning: no figures: {exc}", file=sys.stderr)
    md = out / "summary.md"
    md.write_text(report.to_markdown(figures=figures))
    written.append(md)

    _print_table(report)
    print(f"wrote {', '.join(str(p) for p in written)} in {time.perf_counter() - t0:.0f} s")
    if report.passed is False:
        return _fail(
            "audit FAILED: the ε lower bound exceeds the claimed ε for "
            + ", ".join(report.summary["failed_models"]),
            EXIT_AUDIT_FAILED,
        )
    return EXIT_OK


def _dp_classifier():
    from heml.dp import DPLogisticRegression

    return DPLogisticRegression()


def _print_table(report) -> None:
    head = (
        f"{'model':<20} {'utility':>13} {'AUC':>6} {'TPR@1%':>7} {'TPR@.1%':>8} {'ε LB':>6}  audit"
    )
    print(head)
    for m in report.models:
        s = m.summary
        lb = "—" if s["epsilon_lower_bound"] is None else f"{s['epsilon_lower_bound']:.2f}"
        util = f"{m.utility_metric} {m.utility_test:.3f}"
        which = s.get("epsilon_lower_bound_canary")
        note = f" ({which.replace('_', ' ')} canary)" if which not in (None, "margin") else ""
        print(
            f"{m.label:<20} {util:>13} {s['auc']:>6.3f} {s['tpr_at_fpr_0.01']:>7.3f} "
            f"{s['tpr_at_fpr_0.001']:>8.3f} {lb:>6}  {s['audit']}{note}"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m heml.audit.cli audit …``: the subcommand without the rest of ``heml``."""
    parser = argparse.ArgumentParser(prog="heml")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
