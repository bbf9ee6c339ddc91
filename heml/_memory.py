"""Keep freed memory for reuse instead of handing it back to the OS after every block.

Encrypting or scoring a block allocates and frees many arrays of about a megabyte. glibc's
default returns such memory to the OS as soon as it is freed, so the next block faults every
page in again: on this project's reference VM a 4096-sample block at d = 30 took 1,400 (server)
and 2,600 (client) minor page faults, more than half of its time (see README, Performance).
Raising glibc's mmap and trim thresholds keeps up to ``TRIM_MB`` of freed memory for reuse.

Applied once per process by heml's server workers and by ``heml.Client``; set
``HEML_KEEP_FREED_MEMORY=0`` to leave the allocator alone. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_MB = 32  # allocations above this still get their own mapping (returned at once)
TRIM_MB = 128  # free memory kept at the top of the heap before it is returned


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's allocator for repeated large temporaries; True when applied."""
    if os.environ.get("HEML_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_MB << 20) and mallopt(M_TRIM_THRESHOLD, TRIM_MB << 20)
    )
