"""The servicer's deadline refusal states the time the call had, in milliseconds (issue 18,
round 4: a mutant that scaled ``left`` by 1001 instead of 1000 survived every test).

``_check_deadline`` reads only ``context.time_remaining()``; the end-to-end refusal over a real
server is tested in tests/test_guards_servicer.py. Here the remaining time is fixed, so the
message can be compared exactly."""

from __future__ import annotations

import grpc
import pytest

from heml.server.servicer import COLUMN, ROW, SECONDS_PER_CIPHERTEXT, _check_deadline
from heml.server.status import RequestError


class _Remaining:
    """A servicer context that reports a fixed remaining time (the only thing read)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def time_remaining(self) -> float | None:
        return self.seconds


@pytest.mark.parametrize(("layout", "left"), [(ROW, 2.0), (COLUMN, 1.5)])
def test_the_deadline_refusal_states_the_milliseconds_left_and_needed(layout, left):
    count = int(left / SECONDS_PER_CIPHERTEXT[layout]) + 1000
    need_ms = SECONDS_PER_CIPHERTEXT[layout] * count * 1000
    with pytest.raises(RequestError) as caught:
        _check_deadline(_Remaining(left), layout, count)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(caught.value) == (
        f"{left * 1000:.0f} ms left, but {count} ciphertexts need about {need_ms:.0f} ms"
    )
    assert str(caught.value).startswith(f"{round(left * 1000)} ms left")


def test_enough_time_or_no_deadline_passes():
    count = 100
    need = SECONDS_PER_CIPHERTEXT[ROW] * count
    _check_deadline(_Remaining(need), ROW, count)  # exactly enough: not refused
    _check_deadline(_Remaining(None), ROW, 10**9)  # no deadline set
    with pytest.raises(RequestError):
        _check_deadline(_Remaining(need * 0.999), ROW, count)


# ---------------------------------------------------------------- charge ids (issue 18, round 5)
def test_a_calls_charge_ids_come_from_its_guard_so_a_failed_block_can_be_voided():
    """The servicer asks for a charge id through the call's context. With the interceptor's
    guard on the context, the id is the call's id and a counter, and the guard records it:
    that record is what is voided (refunded) when the block fails. A mutant that looks the
    guard up under another attribute name got a random id the guard never saw."""
    from types import SimpleNamespace

    from heml.server.interceptor import Guard, new_charge_id
    from heml.server.requestlog import CallRecord

    guard = Guard(None, CallRecord(method="Predict"), None, None)
    context = SimpleNamespace(heml_guard=guard)
    first, second = new_charge_id(context), new_charge_id(context)
    assert (first, second) == (f"{guard.call_id}.0", f"{guard.call_id}.1")
    assert guard.charges == [first, second]
    # without a guard (a servicer used directly) every id is fresh and random
    bare = SimpleNamespace()
    ids = {new_charge_id(bare) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
