"""Writing files so that a reader sees the old content or the new, never half of either."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def write_atomically(path: str | os.PathLike, text: str, *, private: bool = False) -> Path:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk and rename it over
    ``path``, creating missing folders. ``private`` files are owner-only (0600); others get
    the usual umask."""
    path = Path(path)
    if not path.parent.is_dir():
        # a missing folder is created (owner-only for secrets), so the error a user sees is
        # never about the hidden temporary file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        if private:
            os.fchmod(fd, 0o600)  # exactly owner read/write, whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the sidecar file ``path + ".lock"`` for a
    read-modify-write of ``path`` by several processes (released when the holder dies too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
