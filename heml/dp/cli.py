"""``heml train``: fit a DP model on a CSV file, export it, and keep a privacy ledger.

Wired into ``heml/cli.py`` with ``register(subparsers)``; ``run(args)`` returns the exit code:
0 success, 2 invalid input or arguments, 3 privacy budget refused, 1 training failed.

Standardization does not leak: features are never scaled with statistics of the private data.
The estimators clip every feature to the declared ``--bounds`` and rescale with the bounds
box (a public affine map). Without ``--bounds`` the bounds are estimated with DP from a share
of --epsilon; ``--bounds data`` reads min/max from the data, and the model says private: false.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from .._csvdata import (
    InvalidInput,
    check_bounds_arg,
    checked_task,
    identifier_warnings,
    numeric_features,
    parse_feature_bounds,
    parse_pair,
    read_table,
)
from . import _ledger
from ._accountant import BudgetError, PrivacyLeakWarning
from ._warnings import BoundsWarning

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_BUDGET = 0, 1, 2, 3
_Invalid = InvalidInput  # bad arguments or data: exit 2 before any budget is spent
_pair = parse_pair


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="train a differentially private model on a CSV file",
        description=(
            "Train a DP linear or logistic model on a CSV file, export it as a heml model file "
            "and record the privacy spent in a ledger (per dataset fingerprint)."
        ),
    )
    p.add_argument("data", help="CSV file with a header row")
    p.add_argument("--target", required=True, help="name of the column to predict")
    p.add_argument("--epsilon", required=True, type=float, help="privacy budget of this fit")
    p.add_argument("--delta", required=True, type=float, help="delta of this fit (< 1/rows)")
    p.add_argument("-o", "--output", required=True, help="model file to write (NAME.json)")
    p.add_argument("--drop", default="", help="comma-separated columns to drop (identifiers)")
    p.add_argument(
        "--ledger", help="privacy ledger file (default: .heml-privacy-ledger.json beside -o)"
    )
    p.add_argument("--budget", type=float, help="total epsilon allowed for this dataset")
    p.add_argument("--task", choices=("auto", "regression", "classification"), default="auto")
    p.add_argument(
        "--bounds",
        help="public bounds of the features, in the CSV's own units: LO,HI for every one, or "
        "FILE.json mapping each feature column to [LO, HI]. Values outside are clipped, so "
        "LO,HI must cover the bulk of every column (-3,3 only suits standardized features). "
        "Default: bounds estimated with DP from a share of --epsilon (see docs/dp.md). "
        "'data': the columns' min and max (the model is then NOT private)",
    )
    p.add_argument(
        "--target-bounds",
        help="public bounds of the target (regression): LO,HI; default: estimated with DP; "
        "'data': its min and max (NOT private)",
    )
    p.add_argument("--seed", type=int, help="noise seed: reproducible and NOT private (tests)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    try:
        return _run(args)
    except _Invalid as exc:
        return _fail(str(exc), EXIT_INVALID)
    except BudgetError as exc:
        return _fail(str(exc), EXIT_BUDGET)
    except _ledger.LedgerError as exc:
        return _fail(str(exc), EXIT_INVALID)
    except Exception as exc:  # training or export failed after validation
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    print(f"heml train: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _run(args) -> int:
    import pandas as pd

    from heml.model import validate_name

    from ._public_scaling import cli_estimator, export_fitted, per_feature
    from ._validation import check_delta_vs_n, check_privacy_params

    # ---------------------------------------------------------------- arguments
    try:
        eps, delta = check_privacy_params(args.epsilon, args.delta)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if math.isinf(eps):
        raise _Invalid("--epsilon must be finite: heml train always trains with DP")
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise _Invalid(f"--budget must be a positive number, got {args.budget}")
    data_bounds = args.bounds == "data"  # opt-in: min/max of the data, model not private
    check_bounds_arg(None if data_bounds else args.bounds)
    target_bounds = (
        "data" if args.target_bounds == "data" else _pair(args.target_bounds, "--target-bounds")
    )
    out = Path(args.output)
    try:
        name = validate_name(out.stem)
    except ValueError as exc:
        raise _Invalid(f"-o: {exc}") from None
    if not out.parent.exists():
        raise _Invalid(f"-o: directory {str(out.parent)!r} does not exist")
    ledger_path = Path(args.ledger) if args.ledger else out.with_name(".heml-privacy-ledger.json")

    # ---------------------------------------------------------------- data
    path = Path(args.data)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise _Invalid(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    fingerprint = hashlib.sha256(content).hexdigest()
    df, y = read_table(content, args.target, args.drop)
    for warning in identifier_warnings(df):
        print(f"heml train: warning: {warning}", file=sys.stderr)
    X = pd.DataFrame(numeric_features(df), columns=df.columns)
    bounds = "data" if data_bounds else parse_feature_bounds(args.bounds, df.columns)
    if y.isna().any():
        raise _Invalid(f"target {args.target!r} has missing values")
    n = len(y)
    try:
        check_delta_vs_n(eps, delta, n)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    task = checked_task(y, args.target, args.task)
    if task == "regression":
        y = y.astype(np.float64)

    # ---------------------------------------------------------------- budget, fit, export
    with _ledger.locked(ledger_path):
        ledger = _ledger.load(ledger_path)
        accountant = _ledger.accountant_for(ledger, fingerprint, args.budget)
        accountant.check(eps, delta)  # refuses (exit 3) before the data are used
        est = cli_estimator(
            task,
            epsilon=eps,
            delta=delta,
            bounds=bounds,
            target_bounds=target_bounds,
            random_state=args.seed,
            accountant=accountant,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrivacyLeakWarning)
            warnings.simplefilter("always", BoundsWarning)
            est.fit(X, y.to_numpy())
        for w in caught:
            if issubclass(w.category, PrivacyLeakWarning):
                print(f"heml train: warning: privacy leak: {w.message}", file=sys.stderr)
            elif issubclass(w.category, BoundsWarning):
                message = str(w.message).replace("bounds_X:", "--bounds:", 1)
                message = message.replace("bounds_y:", "--target-bounds:", 1)
                print(f"heml train: warning: {message}", file=sys.stderr)
        model = export_fitted(est, name=name, bounds=bounds, feature_names=X.columns)
        model.save(out)
        _ledger.record(
            ledger,
            fingerprint,
            source=path.name,
            budget=args.budget,
            epsilon=eps,
            delta=delta,
            model=str(out),
        )
        _ledger.save(ledger_path, ledger)
    spent, _ = accountant.spent
    left = accountant.remaining()[0]
    fitted = est[-1] if per_feature(bounds) else est  # the DP estimator behind the bounds map
    print(
        f"trained {type(fitted).__name__} on {n} rows ({task}); epsilon={eps:g}, delta={delta:g}; "
        f"dataset {fingerprint[:12]} has spent epsilon={spent:g}"
        + ("" if math.isinf(left) else f" (remaining {left:g})")
        + f"; wrote {out}"
    )
    return EXIT_OK


def main(argv=None) -> int:
    """Standalone entry point (``python -m heml.dp.cli train ...``)."""
    parser = argparse.ArgumentParser(prog="heml")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
