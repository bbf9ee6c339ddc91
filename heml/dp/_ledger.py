"""A privacy ledger on disk: (ε, δ) spent per dataset fingerprint, across CLI runs."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
from pathlib import Path

from .._files import write_atomically
from ._accountant import BudgetAccountant, Spend

SCHEMA = "heml.privacy-ledger"
SCHEMA_VERSION = 1


class LedgerError(ValueError):
    """The ledger file is unreadable or not a heml privacy ledger."""


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (a sidecar ``.lock`` file) for a read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load(path: Path) -> dict:
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
            f"this heml reads {SCHEMA_VERSION}"
        )
    data.setdefault("datasets", {})
    return data


def save(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=1, allow_nan=False))


def accountant_for(data: dict, fingerprint: str, budget: float | None) -> BudgetAccountant:
    """An accountant holding this dataset's past spends and its ε budget (inf when none)."""
    entry = data["datasets"].get(fingerprint, {})
    if budget is None:
        budget = entry.get("budget_epsilon")
    acc = BudgetAccountant(epsilon=float("inf") if budget is None else float(budget), delta=1.0)
    for spend in entry.get("spends", []):
        # past spends are facts: recorded even if a budget lowered since makes them exceed it
        acc._ledger.append(Spend(float(spend["epsilon"]), float(spend["delta"]), "ledger"))
    return acc


def record(
    data: dict,
    fingerprint: str,
    *,
    source: str,
    budget: float | None,
    epsilon: float,
    delta: float,
    model: str,
) -> None:
    entry = data["datasets"].setdefault(fingerprint, {"source": source, "spends": []})
    if budget is not None:
        entry["budget_epsilon"] = float(budget)
    entry["spends"].append(
        {
            "epsilon": float(epsilon),
            "delta": float(delta),
            "model": model,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    )
    entry["spent_epsilon"] = sum(s["epsilon"] for s in entry["spends"])
    entry["spent_delta"] = sum(s["delta"] for s in entry["spends"])
