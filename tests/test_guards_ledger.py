"""The privacy ledger and budget accountant, in process (issue 18; docs/dp.md, "Ledger").

Promises: a stored budget holds for later runs that do not repeat it; lowering a budget is
allowed, raising it needs --raise-budget; past spends count against the budget; a spend that
does not fit is refused with nothing recorded, one that fits exactly is recorded; ε and δ are
validated by name (ε > 0, inf allowed; δ in [0, 1]).
"""

from __future__ import annotations

import math

import pytest

from heml.dp import _ledger
from heml.dp._accountant import BudgetAccountant, BudgetError


def _data():
    return {"datasets": {}}


def _reserve(data, eps, budget_eps=2.0, budget_delta=1e-5, delta=1e-6):
    budget = {"budget_epsilon": budget_eps, "budget_delta": budget_delta}
    return _ledger.reserve(
        data, "k", source="data.csv", **budget, epsilon=eps, delta=delta, model="m.json"
    )


def test_nothing_stored_or_given_means_unlimited_epsilon_and_the_default_delta():
    assert _ledger.budgets(_data(), "k", epsilon=None, delta=None, allow_raise=False,
                           default_delta=1e-5) == (math.inf, 1e-5)  # fmt: skip


def test_a_stored_budget_holds_can_be_lowered_and_is_raised_only_on_request():
    data = _data()
    _reserve(data, 0.5, budget_eps=2.0, budget_delta=1e-5)
    entry = data["datasets"]["k"]
    assert entry["budget_epsilon"] == 2.0 and entry["budget_delta"] == 1e-5
    kw = {"allow_raise": False, "default_delta": 0.5}
    assert _ledger.budgets(data, "k", epsilon=None, delta=None, **kw) == (2.0, 1e-5)
    assert _ledger.budgets(data, "k", epsilon=1.0, delta=1e-6, **kw) == (1.0, 1e-6)
    assert _ledger.budgets(data, "k", epsilon=2.0, delta=1e-5, **kw) == (2.0, 1e-5)
    with pytest.raises(BudgetError, match=r"^--budget 2\.1 would raise this dataset's stored "
                       r"epsilon budget of 2; pass --raise-budget"):  # fmt: skip
        _ledger.budgets(data, "k", epsilon=2.1, delta=None, **kw)
    with pytest.raises(BudgetError, match=r"^--budget-delta 2e-05 would raise .* delta budget"):
        _ledger.budgets(data, "k", epsilon=None, delta=2e-5, **kw)
    raised = _ledger.budgets(data, "k", epsilon=3.0, delta=2e-5, allow_raise=True,
                             default_delta=0.5)  # fmt: skip
    assert raised == (3.0, 2e-5)


def test_past_spends_count_and_a_spend_that_fits_exactly_is_recorded():
    data = _data()
    first = _reserve(data, 1.5)
    assert _ledger.spent(data, "k") == (1.5, 1e-6)
    acc = _ledger.accountant_for(data, "k", 2.0, 1e-5)
    assert acc.spent == (1.5, 1e-6) and acc.remaining() == pytest.approx((0.5, 9e-6))
    before = [dict(s) for s in data["datasets"]["k"]["spends"]]
    with pytest.raises(BudgetError, match=r"^privacy budget refused: this run asks ε=0\.6, "
                       r"δ=1e-06, but data\.csv has spent ε=1\.5, δ=1e-06 of its budget "
                       r"\(ε=2, δ=1e-05\)"):  # fmt: skip
        _reserve(data, 0.6)
    assert data["datasets"]["k"]["spends"] == before
    second = _reserve(data, 0.5)  # exactly the rest
    spends = data["datasets"]["k"]["spends"]
    assert [s["id"] for s in spends] == [first, second] and first != second
    assert spends[1]["epsilon"] == 0.5 and spends[1]["delta"] == 1e-6
    assert spends[1]["model"] == "m.json" and spends[1]["status"] == "reserved"
    assert data["datasets"]["k"]["spent_epsilon"] == 2.0
    assert data["datasets"]["k"]["spent_delta"] == 2e-6


def test_an_unlimited_epsilon_budget_is_not_stored_and_delta_still_binds():
    data = _data()
    _reserve(data, 5.0, budget_eps=math.inf, budget_delta=1e-6, delta=6e-7)
    assert "budget_epsilon" not in data["datasets"]["k"]
    with pytest.raises(BudgetError, match=r"budget \(ε unlimited, δ=1e-06\)"):
        _reserve(data, 5.0, budget_eps=math.inf, budget_delta=1e-6, delta=6e-7)


@pytest.mark.parametrize("method", ["check", "spend"])
def test_spends_are_validated_by_name(method):
    acc = BudgetAccountant(epsilon=math.inf, delta=1.0)
    call = getattr(acc, method)
    call(math.inf, 0.0)  # inf allowed
    with pytest.raises(ValueError, match=r"^epsilon must be a positive number"):
        call(0.0, 0.0)
    with pytest.raises(ValueError, match=r"^delta must be a number in \[0, 1\]"):
        call(1.0, 1.5)
    acc = BudgetAccountant(epsilon=1.0, delta=1.0)
    with pytest.raises(BudgetError):
        getattr(acc, method)(math.inf, 0.0)


def test_a_spend_records_its_mechanism_name():
    acc = BudgetAccountant(epsilon=2.0, delta=1e-5)
    acc.spend(1.0, 0.0)
    acc.spend(0.5, 0.0, "laplace")
    assert [s.mechanism for s in acc.ledger] == ["", "laplace"]


def test_a_zero_delta_budget_admits_pure_dp_spends_only():
    acc = BudgetAccountant(epsilon=1.0, delta=0.0)
    acc.spend(0.5, 0.0)
    with pytest.raises(BudgetError):
        acc.spend(0.1, 1e-12)


def test_the_refusal_says_what_remains():
    acc = BudgetAccountant(epsilon=2.0, delta=1e-5)
    acc.spend(1.5, 0.5e-5, "gaussian", steps=3)
    assert acc.ledger[0].detail == {"steps": 3}
    with pytest.raises(BudgetError, match=r"only \(epsilon=0\.5, delta=5e-06\) remains"):
        acc.check(1.0, 0.0)
    acc.spend(0.5, 0.5e-5)  # the rest, exactly
    with pytest.raises(BudgetError, match=r"only \(epsilon=0, delta=0\) remains"):
        acc.check(1e-3, 0.0)


def test_one_name_per_ledger_file(tmp_path):
    """A symlink and a relative spelling resolve to the one file; a second hard link is
    refused, naming the file and the remedy."""
    from heml.dp._accountant import _canonical_ledger_path

    ledger = tmp_path / "ledger.json"
    ledger.write_text("{}")
    (tmp_path / "alias.json").symlink_to(ledger)
    assert _canonical_ledger_path(tmp_path / "alias.json") == ledger.resolve()
    assert _canonical_ledger_path(tmp_path / "new.json") == (tmp_path / "new.json").resolve()
    (tmp_path / "twin.json").hardlink_to(ledger)
    with pytest.raises(ValueError) as refused:
        _canonical_ledger_path(ledger)
    assert str(refused.value) == (
        f"the ledger file {str(ledger.resolve())!r} has 2 hard links; each name would get its "
        "own lock and the budget could be spent twice. Keep one name (remove the others)."
    )


def test_a_reservation_records_who_what_and_when():
    import datetime as dt
    import re

    data = _data()
    token = _reserve(data, 0.5)
    entry = data["datasets"]["k"]
    assert entry["source"] == "data.csv"
    (spend,) = entry["spends"]
    assert re.fullmatch(r"[0-9a-f]{16}", token) and spend["id"] == token
    assert spend["source"] == "data.csv"
    when = dt.datetime.fromisoformat(spend["time"])
    assert when.utcoffset() == dt.timedelta(0) and when.microsecond == 0
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60
    acc = _ledger.accountant_for(data, "k", 2.0, 1e-5)
    assert [s.mechanism for s in acc.ledger] == ["ledger"]
    with pytest.raises(BudgetError, match=r"--raise-budget \(ledger entries are never removed\)$"):
        _reserve(data, 1.6)


def test_malformed_budgets_are_refused_by_name():
    acc = BudgetAccountant(epsilon=math.inf, delta=1.0)
    for eps in (True, "abc", None, math.nan):
        with pytest.raises(ValueError, match=r"^epsilon must be a positive number.*, got "):
            acc.check(eps, 0.0)
    for dlt in ("abc", None, True):
        with pytest.raises(ValueError, match=r"^delta must be a number in \[0, 1\], got "):
            acc.check(1.0, dlt)
