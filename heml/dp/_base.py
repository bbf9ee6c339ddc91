"""What the DP estimators share: the fit prologue (check the budget first) and the guarantee."""

from __future__ import annotations

import functools
import math

import numpy as np
from sklearn.base import BaseEstimator

from ._accountant import BudgetAccountant
from ._validation import check_privacy_params, validate_data

# scikit-learn's and numpy's input errors that quote the data: the offending value
# ("could not convert string to float: 'alice'"), or the whole array ("Complex data not
# supported\n[[...]]", "Expected 2D array, got 1D array instead:\narray=[...]")
_QUOTING_ERRORS = ("could not convert", "Complex data", "array=", "\n[")
NOT_2D_MESSAGE = (
    "X must be a 2-D array of shape (n_samples, n_features), got a 1-D or scalar input; "
    "reshape it (the values are not quoted, so that the message reveals nothing about the data)"
)
COMPLEX_MESSAGE = (
    "Complex data not supported: X and y must hold real numbers (the values are not quoted, so "
    "that the message reveals nothing about the data)"
)
NOT_REAL_MESSAGE = (
    "X and y must hold real numbers (and y labels) only: a value could not be converted to "
    "float; it is not quoted, so that the message reveals nothing about the data"
)

NEIGHBOURING = "replace-one"
NOT_COVERED = [
    "preprocessing fitted on private data (e.g. a StandardScaler fitted on the training set) "
    "unless its statistics are public or were themselves computed with DP",
    "bounds or norms read from the training data (a PrivacyLeakWarning was raised if so)",
    "other releases about the same people (compose them with a BudgetAccountant)",
    "model extraction through many queries is not prevented by DP (it only bounds what the "
    "model reveals about each training record)",
    "floating-point and timing side channels beyond what docs/dp.md states",
]


def numpy_error_defaults(fit):
    """Run ``fit`` under numpy's default floating-point error handling (warn on overflow,
    division by zero and invalid values; ignore underflow), whatever the caller set with
    ``np.seterr``: under ``np.seterr(all="raise")`` one subnormal record made a fit raise after
    the spend while its neighbour's succeeded (found by review)."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        with np.errstate(divide="warn", over="warn", under="ignore", invalid="warn"):
            return fit(self, *args, **kwargs)

    return wrapper


class DPEstimatorMixin:
    """The fit protocol: check parameters and the budget, validate the input, **reserve** the
    spend (atomic check-and-spend) before the mechanism uses the data values, and set the
    fitted attributes only after that. A fit that fails after the reservation (e.g. a
    ``ConvergenceError``) keeps the spend: the data were used."""

    def _begin_fit(self) -> tuple[float, float, BudgetAccountant]:
        """Public checks before the data is read: parameters and a first budget check (fails
        fast; the binding check is ``_reserve``). Forgets an earlier fit, so that a refused
        refit leaves no working model."""
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)
        eps, delta = check_privacy_params(self.epsilon, self.delta)
        carried = self.__dict__.get("_default_accountant_at_pickling")
        if self.accountant is None and carried is not None and not carried._is_live_here():
            # this estimator was pickled into another process while a default accountant was
            # set: spend from that one (a shared file) or be refused (an in-memory copy),
            # never from this process's unlimited default
            accountant = carried
        else:
            accountant = BudgetAccountant.load_default(self.accountant)
        accountant.check(eps, delta)
        return eps, delta, accountant

    def _validate_training_data(self, X, y, **kwargs):
        """``validate_data`` for ``fit``, with error messages that never quote the data.

        Errors that only describe shapes or counts (public) pass through unchanged; an error
        whose text would quote a training value is replaced by a fixed message and raised
        outside the handler, so that no exception chain keeps the original text either.
        """
        try:
            X, y = validate_data(self, X, y, reset=True, **kwargs)
        except (ValueError, TypeError) as exc:
            text = str(exc)
            if not any(marker in text for marker in _QUOTING_ERRORS):
                raise
            if "Expected 2D array" in text:
                fixed = NOT_2D_MESSAGE
            elif "Complex data" in text:
                fixed = COMPLEX_MESSAGE
            else:
                fixed = NOT_REAL_MESSAGE
        else:
            if not kwargs.get("y_numeric") or np.issubdtype(y.dtype, np.number) or y.dtype == bool:
                return X, y
            # text in a numeric target (scikit-learn converts only an object y): refused here,
            # before numpy's conversion error quotes a label (found by review)
            fixed = NOT_REAL_MESSAGE
        raise ValueError(fixed)

    def _reserve(
        self, accountant: BudgetAccountant, eps: float, delta: float, mechanism: str
    ) -> None:
        """Spend (eps, delta) now, under the accountant's lock, before the data values are
        used; raises ``BudgetError`` (nothing spent) if it does not fit. Input validation
        comes before this, so bad input costs nothing; anything after it is paid for."""
        try:
            accountant.spend(eps, delta, mechanism=mechanism)
        except BaseException:
            for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
                delattr(self, attr)
            raise

    def __getstate__(self) -> dict:
        """Pickled with ``accountant=None``: carry the default accountant chosen in this process
        (if any), so that a copy fitted in a worker process cannot fall back to the worker's
        unlimited default."""
        state = super().__getstate__()
        state.pop("_default_accountant_at_pickling", None)
        if getattr(self, "accountant", None) is None:
            chosen = BudgetAccountant._chosen_default()
            if chosen is not None:
                state["_default_accountant_at_pickling"] = chosen
        return state

    def _noise_label(self) -> str:
        if self.random_state is None:
            return "os.urandom (CSPRNG), Box-Muller, lattice-rounded releases"
        return "seeded numpy generator (random_state set): reproducible, NOT private"

    def _guarantee(
        self,
        *,
        epsilon: float,
        delta: float,
        mechanism: str,
        accountant: str,
        hyperparameters: dict,
        bounds: dict,
        n_samples: int,
    ) -> dict:
        private = math.isfinite(epsilon)
        not_covered = list(NOT_COVERED)
        if self.random_state is not None and private:
            not_covered.insert(
                0,
                f"noise from a seeded generator (random_state={self.random_state!r}): anyone who "
                "knows the seed can remove it; use random_state=None for a released model",
            )
        return _jsonable(
            {
                "private": private,
                "epsilon": epsilon if private else None,
                "delta": delta if private else None,
                "mechanism": mechanism,
                "neighbouring": NEIGHBOURING,
                "accountant": accountant,
                "noise": self._noise_label() if private else "none (epsilon=inf)",
                "n_samples": int(n_samples),
                "not_covered": not_covered,
                "hyperparameters": hyperparameters,
                "bounds": bounds,
            }
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        eps = self.epsilon
        tags.non_deterministic = self.random_state is None and not (
            isinstance(eps, float) and math.isinf(eps)
        )
        return tags


def _jsonable(obj):
    """Plain Python types only (numpy scalars/arrays -> float/list), for the model file."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


__all__ = ["NEIGHBOURING", "NOT_COVERED", "BaseEstimator", "DPEstimatorMixin"]
