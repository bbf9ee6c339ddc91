"""BudgetAccountant: a total (ε, δ) budget that DP fits draw from, refusing any overdraft."""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field

# Floating-point slack when comparing sums of ε's (ten fits of 0.1 must fit a budget of 1.0).
_REL_TOL = 1e-9


class BudgetError(ValueError):
    """A fit would spend more privacy budget than the accountant has left."""


class PrivacyLeakWarning(RuntimeWarning):
    """A statistic of the private data was used without being paid for with privacy budget."""


warnings.simplefilter("always", PrivacyLeakWarning)


@dataclass(frozen=True)
class Spend:
    """One entry of an accountant's ledger."""

    epsilon: float
    delta: float
    mechanism: str = ""
    detail: dict = field(default_factory=dict)


class BudgetAccountant:
    """A privacy budget (ε, δ) and the ledger of what has been spent from it.

    Fits check the budget before they read the data and spend once the model exists, so a fit
    that raises (bad input, refused budget) costs nothing. Spends compose **sequentially**
    (basic composition: ε's add up, δ's add up), which is valid for any mix of mechanisms and
    datasets drawn from the same people; each fit's own (ε, δ) comes from dp-accounting.

    Parameters
    ----------
    epsilon : float, default=inf
        Total ε budget, > 0.
    delta : float, default=1.0
        Total δ budget, in [0, 1].

    Notes
    -----
    An accountant stands for one real budget, so ``copy.copy``, ``copy.deepcopy`` and hence
    ``sklearn.base.clone`` return the **same** accountant: a cloned estimator (in
    ``cross_val_score``, ``GridSearchCV``…) still spends from it. Work sent to other processes
    (``n_jobs > 1``) gets a pickled copy whose spends are lost: use ``n_jobs=1`` for DP fits.

    Examples
    --------
    >>> from heml.dp import BudgetAccountant
    >>> acc = BudgetAccountant(epsilon=3.0, delta=2e-5)
    >>> acc.spend(1.0, 1e-5)
    >>> acc.remaining()
    (2.0, 1e-05)
    """

    _default: BudgetAccountant | None = None
    _default_lock = threading.Lock()

    def __init__(self, epsilon: float = math.inf, delta: float = 1.0) -> None:
        self.epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        self.delta = _check_delta(delta, "delta")
        self._ledger: list[Spend] = []
        self._lock = threading.RLock()
        self._saved_default: list[BudgetAccountant | None] = []

    # ------------------------------------------------------------------ state
    @property
    def ledger(self) -> list[Spend]:
        """Every spend so far, oldest first (a copy)."""
        with self._lock:
            return list(self._ledger)

    @property
    def spent(self) -> tuple[float, float]:
        """(ε, δ) spent so far."""
        with self._lock:
            return (
                math.fsum(s.epsilon for s in self._ledger),
                math.fsum(s.delta for s in self._ledger),
            )

    def remaining(self) -> tuple[float, float]:
        """(ε, δ) still available."""
        eps, delta = self.spent
        return max(self.epsilon - eps, 0.0), max(self.delta - delta, 0.0)

    # ------------------------------------------------------------------ check and spend
    def check(self, epsilon: float, delta: float) -> None:
        """Raise :class:`BudgetError` if spending (epsilon, delta) would exceed the budget."""
        epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        delta = _check_delta(delta, "delta")
        with self._lock:
            self._check_locked(epsilon, delta)

    def spend(self, epsilon: float, delta: float, mechanism: str = "", **detail) -> None:
        """Record a spend of (epsilon, delta); raises :class:`BudgetError`, spending nothing,
        if it does not fit."""
        epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        delta = _check_delta(delta, "delta")
        with self._lock:
            self._check_locked(epsilon, delta)
            self._ledger.append(Spend(float(epsilon), float(delta), mechanism, dict(detail)))

    def _check_locked(self, epsilon: float, delta: float) -> None:
        spent_eps, spent_delta = self.spent
        over_eps = _exceeds(spent_eps + epsilon, self.epsilon)
        over_delta = _exceeds(spent_delta + delta, self.delta)
        if over_eps or over_delta:
            rem_eps, rem_delta = self.remaining()
            raise BudgetError(
                f"privacy budget exceeded: requested (epsilon={epsilon:g}, delta={delta:g}) but "
                f"only (epsilon={rem_eps:g}, delta={rem_delta:g}) remains of the total "
                f"(epsilon={self.epsilon:g}, delta={self.delta:g}); see remaining()"
            )

    # ------------------------------------------------------------------ default accountant
    @classmethod
    def load_default(cls, accountant: BudgetAccountant | None = None) -> BudgetAccountant:
        """``accountant`` if given, else the default accountant (an unlimited one at first)."""
        if accountant is not None:
            if not isinstance(accountant, BudgetAccountant):
                raise TypeError(
                    f"accountant must be a heml.dp.BudgetAccountant or None, got "
                    f"{type(accountant).__name__}"
                )
            return accountant
        with cls._default_lock:
            if cls._default is None:
                cls._default = BudgetAccountant()
            return cls._default

    def set_default(self) -> BudgetAccountant:
        """Make this the accountant used by fits that are given ``accountant=None``."""
        with BudgetAccountant._default_lock:
            BudgetAccountant._default = self
        return self

    def __enter__(self) -> BudgetAccountant:
        with BudgetAccountant._default_lock:
            self._saved_default.append(BudgetAccountant._default)
            BudgetAccountant._default = self
        return self

    def __exit__(self, *exc) -> None:
        with BudgetAccountant._default_lock:
            BudgetAccountant._default = self._saved_default.pop()

    # ------------------------------------------------------------------ copying
    def __copy__(self) -> BudgetAccountant:
        return self

    def __deepcopy__(self, memo) -> BudgetAccountant:
        return self

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_saved_default"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        eps, delta = self.spent
        return (
            f"BudgetAccountant(epsilon={self.epsilon:g}, delta={self.delta:g}; "
            f"spent epsilon={eps:g}, delta={delta:g} in {len(self._ledger)} fit(s))"
        )


def _exceeds(total: float, budget: float) -> bool:
    if math.isinf(budget):
        return False
    return total > budget * (1.0 + _REL_TOL) + 1e-300


def _check_epsilon(value, name: str, *, allow_inf: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if isinstance(value, bool) or math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a positive number (inf allowed), got {value!r}")
    return v


def _check_delta(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return v
