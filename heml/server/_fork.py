"""Forking a server child process without losing a stop signal.

A SIGTERM arriving just after ``fork`` would run the parent's handler in the child and be
lost (the child then ignores the stop), so SIGTERM and SIGINT stay blocked across the fork
until the child has its own dispositions.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable


def fork_child(run: Callable[[], int], *, what: str, sigint=signal.SIG_DFL) -> int:
    """Fork; the child sets SIGTERM to its default and SIGINT to ``sigint``, unblocks them,
    runs ``run()`` and exits with its result (1, logged as "``what`` crashed", if it raises).
    Returns the child's pid in the parent."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, sigint)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = run()
        except BaseException:
            logging.getLogger("heml.server").exception("%s crashed", what)
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid
