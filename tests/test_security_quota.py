"""Quotas: what a block is charged, and the token buckets and in-flight counters that worker
processes share."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from heml.he.scoring import ServerScorer
from heml.server.quota import QuotaTable


# ---------------------------------------------------------------------- what a block costs
def _scorer(d: int, k: int = 1) -> ServerScorer:
    rng = np.random.default_rng(d)
    return ServerScorer(rng.normal(size=(k, d)), np.zeros(k), np.zeros(d), np.ones(d), 1e-4)


@pytest.mark.parametrize("d", [1, 3, 30, 700, 3000])
def test_computed_samples_counts_every_slot_the_ciphertexts_carry(d):
    scorer = _scorer(d)
    N_row = scorer.plans["row"].params.n
    smax = scorer.plans["row"].max_samples_per_ciphertext(d)
    for s in sorted({s for s in (1, 2, smax // 2, smax) if 1 <= s <= smax}):
        m = min(d, N_row // s)
        chunks = -(-d // m)
        for n in (1, s, s + 1, 5 * s):
            computed = scorer.computed_samples("row", n, s)
            groups = scorer.expected_ciphertexts("row", n, s) // chunks
            assert computed == groups * (N_row // m)  # (ciphertexts / chunks) · floor(N / m)
            assert computed >= n
    # COLUMN: a block computes all N coefficients, even if the client declares n = 1
    N_col = scorer.plans["column"].params.n
    assert scorer.computed_samples("column", 1, 0) == N_col == 4096
    assert scorer.computed_samples("column", N_col, 0) == N_col


def test_a_single_row_prediction_of_d30_costs_68_slots():
    assert _scorer(30).computed_samples("row", 1, 1) == 2048 // 30 == 68


# ---------------------------------------------------------------------- the shared table
@pytest.fixture()
def table(tmp_path):
    t = QuotaTable.create(tmp_path / "quota", workers=3, capacity=64)
    yield t
    t.close()


def test_token_bucket_grants_refills_and_says_when(table):
    now = 1000.0
    assert table.take("a", 60, per_minute=120, now=now) is None  # starts full (120)
    assert table.take("a", 60, per_minute=120, now=now) is None
    wait = table.take("a", 30, per_minute=120, now=now)
    assert wait == pytest.approx(15.0)  # 30 tokens at 2 per second
    assert table.take("a", 30, per_minute=120, now=now + 14.9) is not None
    assert table.take("a", 30, per_minute=120, now=now + 15.0) is None
    assert table.take("a", 1, per_minute=120, now=now + 15.0) == pytest.approx(0.5)
    # refill stops at one minute's worth
    assert table.take("a", 120, per_minute=120, now=now + 3600) is None
    assert table.take("a", 1, per_minute=120, now=now + 3600) is not None
    # a block larger than the per-minute quota can never pass
    assert table.take("b", 121, per_minute=120, now=now) == math.inf
    # keys are independent; a lowered quota caps the tokens at once
    assert table.take("c", 100, per_minute=1000, now=now) is None
    assert table.take("c", 11, per_minute=10, now=now) == math.inf
    assert table.take("c", 10, per_minute=10, now=now) is None


def test_in_flight_counts_add_up_over_workers_and_reset_per_worker(table):
    assert table.acquire("a", 3, worker=0) is None
    assert table.acquire("a", 3, worker=1) is None
    assert table.acquire("a", 3, worker=2) is None
    assert table.acquire("a", 3, worker=0) == 3
    assert table.acquire("b", 1, worker=0) is None  # another key
    table.release("a", worker=2)
    assert table.in_flight("a") == 2
    table.reset_worker(0)  # worker 0 died with calls in flight
    assert table.in_flight("a") == 1 and table.in_flight("b") == 0
    table.release("a", worker=1)
    table.release("a", worker=1)  # never below zero
    assert table.in_flight("a") == 0


_HAMMER = """
import sys
from heml.server.quota import QuotaTable
t = QuotaTable(sys.argv[1]); worker = int(sys.argv[2])
sys.stdin.readline()  # start together
granted = sum(t.take("k", 1, 3000, now=1000.0) is None for _ in range(2000))
admitted = sum(t.acquire("k", 100, worker) is None for _ in range(60))
print(granted, admitted)
"""


def test_processes_share_one_bucket_exactly(tmp_path):
    path = tmp_path / "quota"
    QuotaTable.create(path, workers=3).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(path), str(w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(3)
    ]
    time.sleep(0.5)  # let them import and map the file
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [tuple(map(int, p.communicate(timeout=60)[0].split())) for p in procs]
    # 6000 attempts on a 3000-token bucket (no refill): exactly 3000 granted, none lost
    assert sum(g for g, _ in results) == 3000
    assert sum(a for _, a in results) == 100
    shared = QuotaTable(path)
    assert shared.in_flight("k") == 100
    shared.close()
