"""SIGINT and SIGTERM as an exception in the main thread, so a search can stop cleanly.

The running trial is then marked FAIL (its parameters queued for one retry) and the command
exits with 128 + the signal number: 130 for Ctrl-C, 143 for ``kill``/a scheduler's SIGTERM.
A second signal while that cleanup runs stops the process at once.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

__all__ = ["Interrupted", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is the conventional 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.name)


@contextmanager
def stop_on_signals():
    """Inside: SIGINT/SIGTERM raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if received:  # the user insists: no more cleanup
            os._exit(128 + received[0])
        received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
