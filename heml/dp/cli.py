"""``heml train``: fit a DP model on a CSV file, export it, and keep a privacy ledger.

Wired into ``heml/cli.py`` with ``register(subparsers)``; ``run(args)`` returns the exit code:
0 success, 2 invalid input or arguments, 3 privacy budget refused, 1 training failed.

The task and the label set are declared, never read from the data (they pick the mechanism):
``--task regression``, or ``--classes a,b,...`` for classification; a row whose label is not
declared is refused (exit 2, before any spend) with a message that does not name it.

Standardization does not leak: features are never scaled with statistics of the private data.
The estimators clip every feature to the declared ``--bounds`` and rescale with the bounds
box (a public affine map). Without ``--bounds`` the bounds are estimated with DP from a share
of --epsilon (one box for all features with ``--shared-scale``, the user's public declaration
that the columns share one unit); ``--bounds data`` reads min/max from the data, and the model
says private: false.
"""

from __future__ import annotations

import argparse
import io
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
from ._accountant import BudgetAccountant, BudgetError, PrivacyLeakWarning
from ._accountant import _canonical_ledger_path as canonical_ledger_path
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
            "and charge the privacy spent to a per-user ledger (per dataset id or fingerprint)."
        ),
    )
    p.add_argument("data", help="CSV file with a header row; - for stdin")
    p.add_argument("--target", required=True, help="name of the column to predict")
    p.add_argument("--epsilon", required=True, type=float, help="privacy budget of this fit")
    p.add_argument("--delta", required=True, type=float, help="delta of this fit (< 1/rows)")
    p.add_argument("-o", "--output", required=True, help="model file to write (NAME.json)")
    p.add_argument("--drop", default="", help="comma-separated columns to drop (identifiers)")
    p.add_argument(
        "--ledger",
        help="privacy ledger file (default: one per user, $XDG_DATA_HOME/heml/"
        "privacy-ledger.json or ~/.local/share/heml/privacy-ledger.json)",
    )
    p.add_argument(
        "--dataset-id",
        help="name under which the ledger charges this dataset; use one id for every file "
        "drawn from the same people (default: a fingerprint of the records that ignores row "
        "and column order)",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="total epsilon allowed for this dataset; stored in the ledger and enforced by "
        "later runs (lowering it is allowed, raising it needs --raise-budget)",
    )
    p.add_argument(
        "--budget-delta",
        type=float,
        help="total delta allowed for this dataset (default on first use: 1/rows); stored "
        "like --budget",
    )
    p.add_argument(
        "--raise-budget",
        action="store_true",
        help="allow --budget/--budget-delta to raise a stored budget",
    )
    p.add_argument(
        "--task",
        choices=("regression", "classification"),
        help="what to fit; required unless --classes is given (then: classification). Never "
        "inferred from the data, since it picks the mechanism",
    )
    p.add_argument(
        "--classes",
        help="the public label set, comma-separated (e.g. no,yes): required for classification; "
        "it fixes the model's classes and mechanism. A row with another label is refused",
    )
    p.add_argument(
        "--bounds",
        help="public bounds of the features, in the CSV's own units: LO,HI for every one, or "
        "FILE.json mapping each feature column to [LO, HI]. Values outside are clipped, so "
        "LO,HI must cover the bulk of every column (-3,3 only suits standardized features). "
        "Default: bounds estimated with DP from a share of --epsilon (see docs/dp.md; "
        "one box for all features with --shared-scale). "
        "'data': the columns' min and max (the model is then NOT private)",
    )
    p.add_argument(
        "--shared-scale",
        action="store_true",
        help="declare that every feature column is in the same unit and on the same scale "
        "(pixel intensities, counts of one thing, one sensor type): the bounds estimated with "
        "DP are then one box for all features, released once (sharper than one box per "
        "column when n*epsilon is small). A public declaration (recorded in the "
        "model's guarantee), never checked against the data: if columns are in different "
        "units, the small ones are clipped to nothing. Not with --bounds",
    )
    p.add_argument(
        "--target-bounds",
        help="public bounds of the target (regression): LO,HI; default: estimated with DP; "
        "'data': its min and max (NOT private)",
    )
    p.add_argument(
        "--out-of-bounds",
        choices=("clip", "error"),
        default="clip",
        help="what the served model does with inputs outside its bounds: clip them (as the "
        "training data were) or refuse the call",
    )
    p.add_argument(
        "--name", help="the model's name on the server (default: the file name of -o, e.g. NAME)"
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


def _check_plan(est, bounds, n: int, d: int, eps: float, delta: float, out: Path) -> None:
    """Refuse before the ledger reserves anything what the fit or the export would refuse
    from public parameters: bounds beyond what a model accepts, a plan that leaves the model
    no ε, a bad label set or seed, more features or classes than a model file holds, an output
    path that is a folder. Before, these failed after the reservation and stayed charged
    (found by review)."""
    from heml.model import MAX_FEATURES, MAX_OUTPUTS

    from ._logistic import public_classes
    from ._noise import NoiseSource
    from ._private_bounds import check_fit_plan
    from ._validation import MIN_SCALE, parse_bounds

    if out.is_dir():
        raise _Invalid(f"-o: {str(out)!r} is a folder; give the model file's path")
    if d > MAX_FEATURES:
        raise _Invalid(f"{d} feature columns: a model holds at most {MAX_FEATURES}")
    try:
        if isinstance(bounds, tuple):  # LO,HI or a file's per-column arrays, in the CSV's units
            # (per-column bounds reach the estimator as the public map's (-1, 1): check them here)
            lo, hi = parse_bounds(bounds, d, "--bounds")
            if np.any((hi - lo) / 2.0 < MIN_SCALE):
                raise ValueError(
                    f"--bounds: a column's half width is below {MIN_SCALE:g}; "
                    "express the data in larger units"
                )
        inner = est.steps[-1][1] if hasattr(est, "steps") else est
        check_fit_plan(inner, n, d, eps, delta)
    except ValueError as exc:
        text = str(exc).replace("bounds_X", "--bounds").replace("bounds_y", "--target-bounds")
        raise _Invalid(text) from None
    try:
        NoiseSource(inner.random_state)
    except ValueError as exc:
        raise _Invalid(f"--seed: {exc}") from None
    if getattr(inner, "classes", None) is None:
        return
    try:  # typed from the tokens: "0,00" or "1,nan" only fail here
        k = len(public_classes(inner.classes))
    except ValueError as exc:
        raise _Invalid(f"--{exc}") from None
    if k > MAX_OUTPUTS:
        raise _Invalid(f"--classes: {k} classes; a model holds at most {MAX_OUTPUTS}")


def _fail(message: str, code: int) -> int:
    print(f"heml train: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _run(args) -> int:
    import pandas as pd

    from heml.model import validate_name

    from ._private_bounds import PrivateBounds
    from ._public_scaling import cli_estimator, export_fitted, per_feature
    from ._validation import check_delta_vs_n, check_privacy_params

    # ---------------------------------------------------------------- arguments
    if not (args.epsilon > 0 and math.isfinite(args.epsilon)):
        raise _Invalid(
            f"--epsilon must be a positive, finite number, got {args.epsilon:g}: heml train "
            "always trains with DP (a non-private model: fit scikit-learn and heml.export it)"
        )
    try:
        eps, delta = check_privacy_params(args.epsilon, args.delta)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    _check_budget_args(args)
    if args.shared_scale and args.bounds is not None:
        raise _Invalid(
            f"--shared-scale and --bounds {args.bounds} cannot be combined: --shared-scale "
            "asks for one box for all features estimated with DP, --bounds gives the bounds "
            "itself; drop one of them"
        )
    data_bounds = args.bounds == "data"  # opt-in: min/max of the data, model not private
    check_bounds_arg(None if data_bounds else args.bounds)
    target_bounds = (
        "data" if args.target_bounds == "data" else _pair(args.target_bounds, "--target-bounds")
    )
    task, class_tokens = declared_task(args.task, args.classes)
    out = Path(args.output)
    try:
        name = validate_name(args.name if args.name is not None else out.stem)
    except ValueError as exc:
        raise _Invalid(f"{'--name' if args.name is not None else '-o'}: {exc}") from None
    try:  # a missing folder is made, as the README's `-o models/NAME.json` expects
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Invalid(f"-o: cannot create folder {str(out.parent)!r}: {exc.strerror}") from None
    try:
        # one name per ledger file (a symlink or relative spelling must not get its own lock)
        ledger_path = canonical_ledger_path(args.ledger or _ledger.default_path())
    except ValueError as exc:
        raise _Invalid(f"--ledger: {exc}") from None

    # ---------------------------------------------------------------- data
    path = Path("stdin" if args.data == "-" else args.data)
    try:
        content = sys.stdin.buffer.read() if args.data == "-" else path.read_bytes()
    except OSError as exc:
        raise _Invalid(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    df, y = read_table(content, args.target, args.drop, name=path.name)
    key = _ledger.dataset_key(args.dataset_id, pd.read_csv(io.BytesIO(content)))
    for warning in identifier_warnings(df):
        print(f"heml train: warning: {warning}", file=sys.stderr)
    X = pd.DataFrame(numeric_features(df), columns=df.columns)
    bounds = "data" if data_bounds else parse_feature_bounds(args.bounds, df.columns)
    if args.shared_scale:  # the user's public declaration: one DP box for all features
        bounds = PrivateBounds(shared_scale=True)
    if y.isna().any():
        raise _Invalid(f"target {args.target!r} has missing values")
    n = len(y)
    try:
        check_delta_vs_n(eps, delta, n)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    classes = None
    if task == "regression":
        checked_task(y, args.target, "regression")
        y = y.astype(np.float64)
    else:
        classes = typed_classes(class_tokens, y)
        if not y.isin(classes).all():
            # one fixed message: naming the label or counting rows would describe the data
            raise _Invalid(
                f"target {args.target!r} has labels that are not in --classes; list every "
                "label in --classes (or remove those rows)"
            )

    est = cli_estimator(
        task,
        epsilon=eps,
        delta=delta,
        bounds=bounds,
        target_bounds=target_bounds,
        random_state=args.seed,
        # exactly what will be reserved: the fit cannot spend more than the ledger charged
        accountant=BudgetAccountant(epsilon=eps, delta=delta),
        classes=classes,
    )
    _check_plan(est, bounds, n, X.shape[1], eps, delta, out)

    # ---------------------------------------------------------------- budget, fit, export
    # check and reserve under one lock, saved before the data reach the estimator: a
    # concurrent run sees the reservation, and it stays charged if anything below fails
    with _ledger.locked(ledger_path):
        ledger = _ledger.load(ledger_path)
        budget_eps, budget_delta = _ledger.budgets(
            ledger,
            key,
            epsilon=args.budget,
            delta=args.budget_delta,
            allow_raise=args.raise_budget,
            default_delta=1.0 / n,
        )
        reservation = _ledger.reserve(
            ledger,
            key,
            source=path.name,
            budget_epsilon=budget_eps,
            budget_delta=budget_delta,
            epsilon=eps,
            delta=delta,
            model=str(out),
        )
        _ledger.save(ledger_path, ledger)
    status = "failed"
    try:
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
        model = export_fitted(
            est,
            name=name,
            bounds=bounds,
            feature_names=X.columns,
            out_of_bounds=args.out_of_bounds,
        )
        model.save(out)
        status = "ok"
    except BaseException as exc:
        status = f"failed: {type(exc).__name__}"
        raise
    finally:
        with _ledger.locked(ledger_path):
            ledger = _ledger.load(ledger_path)
            _ledger.settle(ledger, key, reservation, status)
            _ledger.save(ledger_path, ledger)
    spent = _ledger.spent(ledger, key)[0]
    left = max(budget_eps - spent, 0.0)
    fitted = est[-1] if per_feature(bounds) else est  # the DP estimator behind the bounds map
    print(
        f"trained {type(fitted).__name__} on {n} rows ({task}); epsilon={eps:g}, delta={delta:g}; "
        f"dataset {_short(key)} has spent epsilon={spent:g}"
        + ("" if math.isinf(left) else f" (remaining {left:g})")
        + f"; wrote {out}"
    )
    return EXIT_OK


def declared_task(task: str | None, classes: str | None) -> tuple[str, list[str] | None]:
    """The task from the declared schema only (``--task``, ``--classes``), never from the data;
    returns (task, class tokens or None)."""
    tokens = None
    if classes is not None:
        tokens = [t.strip() for t in classes.split(",")]
        if any(not t for t in tokens) or len(tokens) < 2:
            raise _Invalid(
                f"--classes must list at least two labels separated by commas, got {classes!r}"
            )
        if len(set(tokens)) != len(tokens):
            raise _Invalid(f"--classes has a duplicate label: {classes!r}")
    if task is None:
        if tokens is None:
            raise _Invalid(
                "--task is required: --task regression, or --task classification with "
                "--classes LABEL,LABEL,... (the task is never guessed from the data)"
            )
        task = "classification"
    if task == "classification" and tokens is None:
        raise _Invalid(
            "--classes is required for classification: the public list of labels, e.g. "
            "--classes no,yes (reading them from the data would leak rare labels)"
        )
    if task == "regression" and tokens is not None:
        raise _Invalid("--classes is for classification; drop it or use --task classification")
    return task, tokens


def typed_classes(tokens: list[str], y) -> list:
    """The --classes tokens as values comparable with the target column: numbers for a numeric
    column, booleans for a boolean one, else strings. A token that does not parse stays a
    string and so matches no value (the row check then refuses)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(y):
        words = {"true": True, "false": False, "1": True, "0": False}
        return [words.get(t.lower(), t) for t in tokens]
    if pd.api.types.is_numeric_dtype(y):
        out = []
        for t in tokens:
            try:
                out.append(int(t))
            except ValueError:
                try:
                    out.append(float(t))
                except ValueError:
                    out.append(t)
        return out
    return list(tokens)


def _check_budget_args(args) -> None:
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise _Invalid(f"--budget must be a positive number, got {args.budget}")
    if args.budget_delta is not None and not 0 < args.budget_delta <= 1:
        raise _Invalid(f"--budget-delta must be in (0, 1], got {args.budget_delta}")
    if args.raise_budget and args.budget is None and args.budget_delta is None:
        raise _Invalid("--raise-budget needs the new --budget or --budget-delta")
    did = args.dataset_id
    if did is not None and not (0 < len(did) <= 200 and did.isprintable() and did.strip()):
        raise _Invalid("--dataset-id must be 1 to 200 printable characters")


def _short(key: str) -> str:
    """How the summary line names a dataset: its declared id, or the fingerprint's start."""
    return repr(key[3:]) if key.startswith("id:") else key.split(":", 1)[1][:12]


def main(argv=None) -> int:
    """Standalone entry point (``python -m heml.dp.cli train ...``)."""
    parser = argparse.ArgumentParser(prog="heml")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
