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

__all__ = ["Interrupted", "stop_on_signals", "raise_if_interrupted"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the stop signal that arrived inside stop_on_signals, if any


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
    def handler(signum, frame):
        if _received:  # the user insists: no more cleanup
            os._exit(128 + _received[0])
        _received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise the stop signal again if it arrived but was lost: the handler's exception, raised
    inside a garbage-collection callback (SQLAlchemy's, under MLflow's store), is only
    printed ("Exception ignored in ..."). The driver calls this once per epoch."""
    if _received:
        raise Interrupted(_received[0])
