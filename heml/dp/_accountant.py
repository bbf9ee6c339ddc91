"""BudgetAccountant: a total (ε, δ) budget that DP fits draw from, refusing any overdraft."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import threading
import uuid
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

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
    path : str or Path, default=None
        A ledger file shared by every process that uses this accountant: each spend locks the
        file (``fcntl.flock``), re-reads it, checks and appends. An existing file must hold the
        same totals. The path is made absolute and its symbolic links resolved here, so every
        spelling of one file (relative, absolute, through a symlink) shares one lock and one
        ledger; a file with several hard links is refused (each name would get its own lock).
        ``None``: the ledger lives in this object's memory.

    Notes
    -----
    An accountant stands for one real budget, so ``copy.copy``, ``copy.deepcopy`` and hence
    ``sklearn.base.clone`` return the **same** accountant: a cloned estimator (in
    ``cross_val_score``, ``GridSearchCV``…) still spends from it. Unpickling in the same
    process also returns the same accountant. A copy that reaches **another process**
    (``n_jobs > 1`` through joblib, a fork, a pickle loaded elsewhere) cannot record its spends
    where the others see them, so an in-memory accountant there refuses every check and spend
    (``BudgetError``); a file-backed one (``path=...``) keeps working, since the file is the
    shared state. An estimator with ``accountant=None`` pickled while a default was chosen
    (``set_default``, ``with``) carries that default to the worker, with the same rules; with
    no default chosen a worker uses its own unlimited one.

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
    # ``with`` blocks: the ones entered in this thread/context (innermost last), and every
    # block open in any thread, for threads that entered none (e.g. workers started inside)
    _entered: ClassVar[contextvars.ContextVar] = contextvars.ContextVar(
        "heml_budget_accountant_entered", default=()
    )
    _open_blocks: ClassVar[list] = []
    # every in-memory accountant of this process by token, so that unpickling here returns it
    _live: ClassVar[weakref.WeakValueDictionary] = weakref.WeakValueDictionary()

    def __init__(
        self,
        epsilon: float = math.inf,
        delta: float = 1.0,
        *,
        path: str | os.PathLike | None = None,
    ) -> None:
        self.epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        self.delta = _check_delta(delta, "delta")
        self._ledger: list[Spend] = []
        self._lock = threading.RLock()
        self._saved_default: list[BudgetAccountant | None] = []
        self._path = None if path is None else _canonical_ledger_path(path)
        self._pid = os.getpid()
        self._token = uuid.uuid4().hex
        self._implicit = False
        BudgetAccountant._live[self._token] = self
        if self._path is not None:
            with self._file_locked():
                self._load_file(create=True)

    @property
    def path(self) -> Path | None:
        """The shared ledger file, or None for an in-memory accountant."""
        return self._path

    # ------------------------------------------------------------------ state
    @property
    def ledger(self) -> list[Spend]:
        """Every spend so far, oldest first (a copy)."""
        with self._lock:
            if self._path is not None:
                with self._file_locked():
                    return self._load_file()
            return list(self._ledger)

    @property
    def spent(self) -> tuple[float, float]:
        """(ε, δ) spent so far."""
        ledger = self.ledger
        return (math.fsum(s.epsilon for s in ledger), math.fsum(s.delta for s in ledger))

    def remaining(self) -> tuple[float, float]:
        """(ε, δ) still available."""
        eps, delta = self.spent
        return max(self.epsilon - eps, 0.0), max(self.delta - delta, 0.0)

    # ------------------------------------------------------------------ check and spend
    def check(self, epsilon: float, delta: float) -> None:
        """Raise :class:`BudgetError` if spending (epsilon, delta) would exceed the budget."""
        epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        delta = _check_delta(delta, "delta")
        with self._lock, self._shared():
            self._check_locked(epsilon, delta, self._current())

    def spend(self, epsilon: float, delta: float, mechanism: str = "", **detail) -> None:
        """Record a spend of (epsilon, delta); raises :class:`BudgetError`, spending nothing,
        if it does not fit. Check and record are one atomic step (thread lock; file lock for
        a file-backed accountant)."""
        epsilon = _check_epsilon(epsilon, "epsilon", allow_inf=True)
        delta = _check_delta(delta, "delta")
        with self._lock, self._shared():
            ledger = self._current()
            self._check_locked(epsilon, delta, ledger)
            ledger.append(Spend(float(epsilon), float(delta), mechanism, dict(detail)))
            if self._path is not None:
                self._save_file(ledger)
            else:
                self._ledger = ledger

    # ------------------------------------------------------------------ shared state
    @contextlib.contextmanager
    def _shared(self):
        """Refuse in a process this in-memory accountant was copied into; lock the file of a
        file-backed one for the duration of a check or spend."""
        if self._path is None:
            if self._pid != os.getpid():
                raise BudgetError(
                    "this BudgetAccountant is a copy in another process (e.g. joblib n_jobs>1 "
                    "or a fork): its spends would be lost, so it refuses; use n_jobs=1 or a "
                    "file-backed BudgetAccountant(..., path=...) that processes share"
                )
            yield
            return
        with self._file_locked():
            yield

    def _current(self) -> list[Spend]:
        return self._load_file() if self._path is not None else list(self._ledger)

    @contextlib.contextmanager
    def _file_locked(self):
        from .._files import exclusive_lock

        with exclusive_lock(self._path):
            yield

    def _load_file(self, create: bool = False) -> list[Spend]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            if not create:
                raise BudgetError(f"the ledger file {str(self._path)!r} has disappeared") from None
            self._save_file([])
            return []
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the ledger file {str(self._path)!r}: {exc}") from None
        totals = (_from_json(data.get("epsilon")), _from_json(data.get("delta")))
        if totals != (self.epsilon, self.delta):
            raise ValueError(
                f"the ledger file {str(self._path)!r} holds the budget (epsilon={totals[0]:g}, "
                f"delta={totals[1]:g}), not (epsilon={self.epsilon:g}, delta={self.delta:g}); "
                "open it with the same totals"
            )
        return [Spend(**entry) for entry in data.get("spends", [])]

    def _save_file(self, ledger: list[Spend]) -> None:
        data = {
            "epsilon": _to_json(self.epsilon),
            "delta": self.delta,
            "spends": [asdict(s) for s in ledger],
        }
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self._path)

    def _check_locked(self, epsilon: float, delta: float, ledger: list[Spend]) -> None:
        spent_eps = math.fsum(s.epsilon for s in ledger)
        spent_delta = math.fsum(s.delta for s in ledger)
        over_eps = _exceeds(spent_eps + epsilon, self.epsilon)
        over_delta = _exceeds(spent_delta + delta, self.delta)
        if over_eps or over_delta:
            rem_eps = max(self.epsilon - spent_eps, 0.0)
            rem_delta = max(self.delta - spent_delta, 0.0)
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
            block = cls._block_default()
            if block is not None:
                return block
            stale = cls._default is not None and cls._default._implicit
            if cls._default is None or (stale and cls._default._pid != os.getpid()):
                # none yet, or the unlimited one forked from the parent (nobody chose it: a
                # forked worker gets its own, as a spawned one does)
                cls._default = BudgetAccountant()
                cls._default._implicit = True  # nobody chose it: nothing to carry to workers
            return cls._default

    @classmethod
    def _block_default(cls) -> BudgetAccountant | None:
        """The accountant of the innermost ``with`` block entered in this thread; in a thread
        that entered none, the one block open anywhere (refused if blocks of several
        accountants are open in different threads: which budget applies is ambiguous)."""
        mine = cls._entered.get()
        if mine:
            return mine[-1]
        open_blocks = list({id(a): a for a in cls._open_blocks}.values())
        if len(open_blocks) > 1:
            raise BudgetError(
                "several `with BudgetAccountant(...)` blocks are open in other threads and this "
                "thread entered none, so the budget to charge is ambiguous: pass accountant=... "
                "to the estimator, or enter the block in this thread"
            )
        return open_blocks[0] if open_blocks else None

    def set_default(self) -> BudgetAccountant:
        """Make this the accountant used by fits that are given ``accountant=None`` (outside
        any ``with`` block)."""
        with BudgetAccountant._default_lock:
            BudgetAccountant._default = self
        return self

    def __enter__(self) -> BudgetAccountant:
        """Make this the default accountant until the block ends, for fits in this thread (and
        in threads that entered no block of their own). Blocks in different threads do not
        replace each other's default."""
        with BudgetAccountant._default_lock:
            BudgetAccountant._entered.set((*BudgetAccountant._entered.get(), self))
            BudgetAccountant._open_blocks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with BudgetAccountant._default_lock:
            mine = list(BudgetAccountant._entered.get())
            if self in mine:
                del mine[len(mine) - 1 - mine[::-1].index(self)]
            BudgetAccountant._entered.set(tuple(mine))
            if self in BudgetAccountant._open_blocks:
                BudgetAccountant._open_blocks.remove(self)

    # ------------------------------------------------------------------ copying
    def __copy__(self) -> BudgetAccountant:
        return self

    def __deepcopy__(self, memo) -> BudgetAccountant:
        return self

    @classmethod
    def _chosen_default(cls) -> BudgetAccountant | None:
        """The default accountant if someone set it (``set_default`` or ``with``), else None."""
        with cls._default_lock:
            block = cls._block_default()
        if block is not None:
            return block
        default = cls._default
        return None if default is None or default._implicit else default

    def _is_live_here(self) -> bool:
        return BudgetAccountant._live.get(self._token) is self and self._pid == os.getpid()

    def __reduce__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_saved_default"] = []
        return (_restore, (state,))

    def __repr__(self) -> str:
        eps, delta = self.spent
        return (
            f"BudgetAccountant(epsilon={self.epsilon:g}, delta={self.delta:g}; "
            f"spent epsilon={eps:g}, delta={delta:g} in {len(self.ledger)} fit(s))"
        )


def _restore(state: dict) -> BudgetAccountant:
    """Unpickling: the live accountant itself when it exists in this process, else a copy that
    keeps the original's process id (an in-memory copy then refuses to spend; see Notes)."""
    live = BudgetAccountant._live.get(state.get("_token"))
    if live is not None and state.get("_pid") == os.getpid():
        return live
    acc = BudgetAccountant.__new__(BudgetAccountant)
    acc.__dict__.update(state)
    acc._lock = threading.RLock()
    if acc._path is not None:
        acc._pid = os.getpid()  # the file is the shared state: usable anywhere
    return acc


def _canonical_ledger_path(path: str | os.PathLike) -> Path:
    """One name per ledger file: absolute, symlinks resolved; several hard links refused.

    The lock file is named after the ledger and each save replaces the ledger by name, so two
    spellings of one file (a symlink, a relative path read from another directory) would lock
    different files, and a save through a symlink would replace the link by a private copy:
    two ledgers, and the budget spent twice.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        links = resolved.stat().st_nlink
    except FileNotFoundError:
        links = 1
    if links > 1:
        raise ValueError(
            f"the ledger file {str(resolved)!r} has {links} hard links; each name would get its "
            "own lock and the budget could be spent twice. Keep one name (remove the others)."
        )
    return resolved


def _to_json(value: float):
    return "inf" if math.isinf(value) else value


def _from_json(value) -> float:
    return math.inf if value == "inf" else float(value)


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
