"""A privacy ledger on disk: (ε, δ) spent per dataset, across ``heml train`` runs.

One ledger per user by default (``$XDG_DATA_HOME/heml/privacy-ledger.json``, else
``~/.local/share/heml/privacy-ledger.json``), so writing models to another folder does not
start a fresh budget. A dataset is keyed by a declared id (``--dataset-id``) or, by default,
by a fingerprint of its parsed records that ignores row order, column order and column
names, so a shuffled copy of a file is the same dataset.

A run **reserves** its (ε, δ) under the ledger's file lock before the data reach the
estimator: check and reserve are one step, so two concurrent runs cannot both pass a check
that only one of them fits. The reservation stays charged whatever happens next (a
``ConvergenceError``, a failed export, a killed process): the data were used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._files import exclusive_lock, write_atomically
from ._accountant import BudgetAccountant, BudgetError, Spend

SCHEMA = "heml.privacy-ledger"
SCHEMA_VERSION = 2
LEDGER_NAME = "privacy-ledger.json"


class LedgerError(ValueError):
    """The ledger file is unreadable or not a heml privacy ledger."""


def default_path() -> Path:
    """The per-user ledger: ``$XDG_DATA_HOME/heml/privacy-ledger.json`` when XDG_DATA_HOME is
    an absolute path (the XDG spec ignores relative ones), else under ``~/.local/share``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "heml" / LEDGER_NAME


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a sidecar ``.lock`` file) for a read-modify-write."""
    with exclusive_lock(path):
        yield


def load(path: Path) -> dict:
    """The ledger at ``path`` (an empty one if the file does not exist)."""
    if not path.exists():
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "datasets": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LedgerError(f"cannot read privacy ledger {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise LedgerError(f"{str(path)!r} is not a heml privacy ledger")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise LedgerError(
            f"privacy ledger {str(path)!r} has schema_version {data.get('schema_version')!r}; "
            f"this heml reads {SCHEMA_VERSION}: keep the old file for your records and pass "
            "--ledger with a new path (re-enter its budgets with --budget)"
        )
    if not isinstance(data.get("datasets", {}), dict):
        raise LedgerError(f"privacy ledger {str(path)!r} is damaged: 'datasets' is not an object")
    data.setdefault("datasets", {})
    return data


def save(path: Path, data: dict) -> None:
    """Replace the ledger file atomically (owner-only: it names datasets and models)."""
    write_atomically(path, json.dumps(data, indent=1, allow_nan=False), private=True)


# ---------------------------------------------------------------------- dataset identity
def table_fingerprint(df) -> str:
    """A hash of the multiset of records in ``df`` (a parsed CSV, every column).

    Invariant to the order of rows, the order of columns and the column names; numbers are
    compared as float64 (``1`` and ``1.0`` are equal). Any added, removed or edited record or
    column gives another fingerprint: declare ``--dataset-id`` for files drawn from the same
    people.
    """
    import pandas as pd

    n, width = df.shape
    cells = np.empty((n, width), dtype=np.uint64)
    for j, col in enumerate(df.columns):
        cells[:, j] = _column_codes(df[col], pd)
    # canonical column order: by each column's sorted values, so names play no part. Columns
    # holding the same multiset of values tie; within a row their values are sorted, so their
    # order cannot matter either (two tables that differ only by swapping such values within
    # rows then share one budget: the cautious side)
    keys = [hashlib.sha256(np.sort(cells[:, j]).tobytes()).digest() for j in range(width)]
    order = sorted(range(width), key=lambda j: keys[j])
    cells = cells[:, order]
    start = 0
    for end in range(1, width + 1):
        if end == width or keys[order[end]] != keys[order[start]]:
            if end - start > 1:
                cells[:, start:end] = np.sort(cells[:, start:end], axis=1)
            start = end
    rows = np.lexsort(cells.T[::-1]) if width else np.arange(n)
    h = hashlib.sha256(f"heml-table-v1:{n}x{width}:".encode())
    h.update(np.ascontiguousarray(cells[rows]).tobytes())
    return "table:" + h.hexdigest()


def _column_codes(series, pd) -> np.ndarray:
    """One uint64 per value: a numeric value's float64 bits (−0 → +0, one NaN), else the first
    8 bytes of the SHA-256 of its text."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0
        values[np.isnan(values)] = np.nan
        return values.view(np.uint64).copy()
    out = np.empty(len(series), dtype=np.uint64)
    for i, v in enumerate(series.tolist()):
        text = "\0nan" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        out[i] = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return out


def dataset_key(dataset_id: str | None, df) -> str:
    """The ledger key: ``id:<declared id>``, else the table fingerprint of ``df``."""
    if dataset_id is not None:
        return "id:" + dataset_id
    return table_fingerprint(df)


# ---------------------------------------------------------------------- budgets
def budgets(
    data: dict,
    key: str,
    *,
    epsilon: float | None,
    delta: float | None,
    allow_raise: bool,
    default_delta: float,
) -> tuple[float, float]:
    """The (ε, δ) budget this run enforces for dataset ``key``.

    A stored budget holds until changed: a run without ``epsilon``/``delta`` enforces it.
    Lowering a budget is always allowed; raising one raises :class:`BudgetError` unless
    ``allow_raise``. With nothing stored or given, ε is unlimited and δ is ``default_delta``.
    """
    entry = data["datasets"].get(key, {})
    eps = _pick(epsilon, entry.get("budget_epsilon"), allow_raise, "--budget", "epsilon")
    dlt = _pick(delta, entry.get("budget_delta"), allow_raise, "--budget-delta", "delta")
    return (math.inf if eps is None else eps), (default_delta if dlt is None else dlt)


def _pick(given, stored, allow_raise: bool, flag: str, what: str) -> float | None:
    if given is None:
        return None if stored is None else float(stored)
    given = float(given)
    if stored is not None and given > float(stored) * (1 + 1e-12) and not allow_raise:
        raise BudgetError(
            f"{flag} {given:g} would raise this dataset's stored {what} budget of "
            f"{float(stored):g}; pass --raise-budget if that is intended"
        )
    return given


def accountant_for(data: dict, key: str, epsilon: float, delta: float) -> BudgetAccountant:
    """An accountant holding dataset ``key``'s past spends and reservations under the budget
    (``epsilon``, ``delta``) from :func:`budgets`."""
    acc = BudgetAccountant(epsilon=epsilon, delta=delta)
    for spend in data["datasets"].get(key, {}).get("spends", []):
        # past spends are facts: recorded even if a budget lowered since makes them exceed it
        acc._ledger.append(Spend(float(spend["epsilon"]), float(spend["delta"]), "ledger"))
    return acc


def reserve(
    data: dict,
    key: str,
    *,
    source: str,
    budget_epsilon: float,
    budget_delta: float,
    epsilon: float,
    delta: float,
    model: str,
) -> str:
    """Check (ε, δ) against the budget and record it as a reservation; returns its id.

    Raises :class:`BudgetError` (nothing recorded) if it does not fit. Call under
    :func:`locked` and :func:`save` before releasing the lock.
    """
    try:
        accountant_for(data, key, budget_epsilon, budget_delta).spend(epsilon, delta)
    except BudgetError:
        spent_eps, spent_delta = spent(data, key)
        budget = f"ε={budget_epsilon:g}" if math.isfinite(budget_epsilon) else "ε unlimited"
        raise BudgetError(
            f"privacy budget refused: this run asks ε={epsilon:g}, δ={delta:g}, but {source} "
            f"has spent ε={spent_eps:g}, δ={spent_delta:g} of its budget ({budget}, "
            f"δ={budget_delta:g}); a bigger budget needs --budget/--budget-delta with "
            "--raise-budget (ledger entries are never removed)"
        ) from None
    entry = data["datasets"].setdefault(key, {"source": source, "spends": []})
    if math.isfinite(budget_epsilon):
        entry["budget_epsilon"] = float(budget_epsilon)
    entry["budget_delta"] = float(budget_delta)
    token = secrets.token_hex(8)
    entry["spends"].append(
        {
            "id": token,
            "epsilon": float(epsilon),
            "delta": float(delta),
            "model": model,
            "source": source,
            "status": "reserved",
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    )
    _totals(entry)
    return token


def settle(data: dict, key: str, reservation: str, status: str) -> None:
    """Mark reservation ``reservation`` as ``status`` ("ok" or "failed: <ErrorType>"); the
    spend stays charged either way (and if the entry has vanished from the file)."""
    for spend in data["datasets"].get(key, {}).get("spends", []):
        if spend.get("id") == reservation:
            spend["status"] = status


def spent(data: dict, key: str) -> tuple[float, float]:
    """(ε, δ) charged to dataset ``key`` so far."""
    spends = data["datasets"].get(key, {}).get("spends", [])
    return math.fsum(s["epsilon"] for s in spends), math.fsum(s["delta"] for s in spends)


def _totals(entry: dict) -> None:
    entry["spent_epsilon"] = math.fsum(s["epsilon"] for s in entry["spends"])
    entry["spent_delta"] = math.fsum(s["delta"] for s in entry["spends"])
