"""Finding trials whose worker died, on every storage (Optuna's heartbeats cover only RDBs).

A running trial records which process runs it and, every ``BEAT_SECONDS``, that it is still
alive. Before claiming work, every process sweeps the study: a RUNNING trial is stale when its
process is gone from this very machine (seen at once, e.g. after ``kill -9`` and a restart),
or when it has not beaten for ``STALE_SECONDS`` (a dead machine). A stale trial is marked
FAIL with the reason and its parameters get one retry.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from automl.trial_queue import retry_once

__all__ = ["beating", "sweep_stale", "stale_reason", "BEAT_SECONDS", "STALE_SECONDS"]

BEAT_SECONDS = 20.0
STALE_SECONDS = 120.0
WORKER = "automl:worker"
BEAT = "automl:heartbeat"


def _process_started(pid: int) -> str | None:
    """The kernel's start time of a process: tells a reused pid from the original one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": _process_started(os.getpid())}


def _alive(worker: dict) -> bool:
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process with this pid
    started = _process_started(worker["pid"])
    return started is None or worker.get("started") in (None, started)


@contextmanager
def beating(study: optuna.Study, trial: optuna.Trial):
    """Mark the trial as run by this process and keep its heartbeat going while inside."""
    storage, trial_id = study._storage, trial._trial_id
    storage.set_trial_system_attr(trial_id, WORKER, _this_worker())  # the claim is beat 0
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_SECONDS):
            try:
                storage.set_trial_system_attr(trial_id, BEAT, time.time())
            except Exception:  # noqa: BLE001 - the trial's own writes report storage errors
                continue

    thread = threading.Thread(target=beat, name=f"automl-heartbeat-{trial.number}",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def stale_reason(trial: FrozenTrial, now: float, host: str) -> str | None:
    """Why a RUNNING trial is stale, or None while its worker may still be running it."""
    worker = trial.system_attrs.get(WORKER)
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = trial.system_attrs.get(BEAT, started)
    if worker and worker.get("host") == host and not _alive(worker):
        return f"worker died (pid {worker['pid']} on {host} is gone)"
    if now - last > STALE_SECONDS:
        where = f"pid {worker['pid']} on {worker['host']}" if worker else "its worker"
        return f"worker died ({where} sent no heartbeat for {now - last:.0f} s)"
    return None


def sweep_stale(study: optuna.Study) -> None:
    """Fail every stale trial with its reason and retry its parameters once (when two
    processes sweep the same trial, the storage lets one of them fail it)."""
    now, host = time.time(), socket.gethostname()
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, now, host)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process swept it first
        retry_once(study, trial)
