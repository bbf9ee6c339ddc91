"""Per-key quotas shared by every worker process: a token bucket and in-flight counters.

Workers are separate processes and the kernel spreads connections over them, so a limit kept
in each process would be wrong by a factor of the worker count. The state lives instead in
one small file that the supervisor creates before forking (in a private 0700 directory) and
every worker maps with ``mmap(MAP_SHARED)``; an update takes a ``flock`` on the worker's own
open of that file (plus a thread lock, since flock is per open file, not per thread), reads the
record, changes it and releases. A worker killed while holding the lock releases it with its
file descriptors, so nothing can stay locked. Time is ``CLOCK_MONOTONIC``, the same in every
process on the machine.

Record per key id (found by linear probing on a 16-byte BLAKE2b of the id):

* ``tokens``/``stamp``: a token bucket of ``predictions_per_minute`` capacity refilled at
  ``predictions_per_minute / 60`` per second; a block takes as many tokens as the sample
  slots the server computes for it (heml.he.scoring.ServerScorer.computed_samples);
* one in-flight counter per worker slot: the key's concurrency is their sum. When a worker
  dies mid-call its counters would leak, so the supervisor zeroes that slot's column before
  it starts the replacement.

Records with other ids (containing ``/``, which key ids cannot) hold allowances that never
refill: the model-privacy mode's per-key quota (``take_total``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path

MAGIC = b"HEMLQTA1"
_HEADER = struct.Struct("<8sII")  # magic, capacity, workers
DEFAULT_CAPACITY = 8192  # distinct key ids over the server's life (the key file holds ≤ 4096)


def _digest(key_id: str) -> bytes:
    d = hashlib.blake2b(key_id.encode("utf-8"), digest_size=16).digest()
    return d if any(d) else b"\x01" + d[1:]  # all-zero marks an empty record


class QuotaTableFull(RuntimeError):
    """More distinct key ids than the table holds (refused rather than left unlimited)."""


class QuotaTable:
    """Shared per-key token buckets and in-flight counters (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR)
        try:
            size = os.fstat(self._fd).st_size
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise
        magic, self.capacity, self.workers = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            self.close()
            raise ValueError(f"{self.path} is not a heml quota table")
        self._record = struct.Struct(f"<16sdd{self.workers}i")
        self._stride = -(-self._record.size // 8) * 8
        self._thread_lock = threading.Lock()
        self._slots: dict[str, int] = {}

    @classmethod
    def create(
        cls, path: str | os.PathLike, *, workers: int, capacity: int = DEFAULT_CAPACITY
    ) -> QuotaTable:
        """Create an empty table file (mode 0600) sized for ``workers`` worker slots."""
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be positive")
        record = struct.Struct(f"<16sdd{workers}i")
        stride = -(-record.size // 8) * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, _HEADER.size + capacity * stride)  # sparse zeros: all empty
            os.pwrite(fd, _HEADER.pack(MAGIC, capacity, workers), 0)
        finally:
            os.close(fd)
        return cls(path)

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------ locking and records
    @contextlib.contextmanager
    def _locked(self):
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _offset(self, index: int) -> int:
        return _HEADER.size + index * self._stride

    def _find(self, key_id: str) -> int:
        """Record index of ``key_id``, inserting it if new (call with the lock held)."""
        index = self._slots.get(key_id)
        if index is not None:
            return index
        digest = _digest(key_id)
        start = int.from_bytes(digest[:8], "little") % self.capacity
        for probe in range(self.capacity):
            index = (start + probe) % self.capacity
            off = self._offset(index)
            current = self._map[off : off + 16]
            if current == digest:
                break
            if not any(current):
                self._map[off : off + 16] = digest
                break
        else:
            raise QuotaTableFull(f"quota table full ({self.capacity} key ids)")
        self._slots[key_id] = index
        return index

    def _read(self, index: int) -> list:
        return list(self._record.unpack_from(self._map, self._offset(index)))

    def _write(self, index: int, values: list) -> None:
        self._record.pack_into(self._map, self._offset(index), *values)

    # ------------------------------------------------------------ the operations
    def take(
        self, key_id: str, cost: int, per_minute: int, now: float | None = None
    ) -> float | None:
        """Spend ``cost`` tokens of a ``per_minute`` bucket.

        Returns None when granted, else the seconds until it could be (``inf`` when ``cost``
        is above the bucket's capacity and can never be granted).
        """
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        with self._locked():
            index = self._find(key_id)
            rec = self._read(index)
            tokens, stamp = rec[1], rec[2]
            if stamp == 0.0:  # first use: the bucket starts full
                tokens = float(per_minute)
            else:
                tokens = min(float(per_minute), tokens + max(0.0, now - stamp) * rate)
            granted = cost <= tokens
            if granted:
                tokens -= cost
            rec[1], rec[2] = tokens, now
            self._write(index, rec)
        if granted:
            return None
        if cost > per_minute:
            return math.inf
        return (cost - tokens) / rate

    def take_total(self, key_id: str, cost: int, limit: int) -> int | None:
        """Spend ``cost`` of an allowance of ``limit`` that never refills (for the server's life).

        Returns None when granted, else the amount already used. Uses a record of its own
        (pass an id that cannot be an API key id, e.g. with a ``/``).
        """
        with self._locked():
            index = self._find(key_id)
            rec = self._read(index)
            used = int(rec[1])  # the tokens field holds the amount used
            if used + cost > limit:
                return used
            rec[1] = float(used + cost)
            self._write(index, rec)
        return None

    def acquire(self, key_id: str, limit: int, worker: int) -> int | None:
        """Count one more call in flight for ``key_id`` on ``worker`` if fewer than ``limit``
        are in flight on all workers together; returns None if admitted, else that number."""
        with self._locked():
            index = self._find(key_id)
            rec = self._read(index)
            counts = rec[3:]
            in_flight = sum(max(0, c) for c in counts)
            if in_flight >= limit:
                return in_flight
            rec[3 + worker] = counts[worker] + 1
            self._write(index, rec)
        return None

    def release(self, key_id: str, worker: int) -> None:
        with self._locked():
            index = self._find(key_id)
            rec = self._read(index)
            rec[3 + worker] = max(0, rec[3 + worker] - 1)
            self._write(index, rec)

    def in_flight(self, key_id: str) -> int:
        with self._locked():
            return sum(max(0, c) for c in self._read(self._find(key_id))[3:])

    def reset_worker(self, worker: int) -> None:
        """Forget the calls a dead worker had in flight (the supervisor, before replacing it)."""
        with self._locked():
            for index in range(self.capacity):
                off = self._offset(index)
                if not any(self._map[off : off + 16]):
                    continue
                rec = self._read(index)
                if rec[3 + worker]:
                    rec[3 + worker] = 0
                    self._write(index, rec)
