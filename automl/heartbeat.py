"""Finding trials whose worker died, on every storage (Optuna's heartbeats cover only RDBs).

A running trial records which process runs it and, every ``BEAT_SECONDS``, that it is still
alive. Every process sweeps the study when it starts, on a timer and whenever it finds no
ticket left (:mod:`automl.trial_loop`): a RUNNING trial is stale when its
process is gone from this very machine (seen at once, e.g. after ``kill -9`` and a restart),
or when it has not beaten for ``STALE_SECONDS`` (a dead machine). A stale trial is marked
FAIL with the reason and its parameters get one retry.

"This very machine" is where a pid names one process: the same boot of the kernel and the
same pid namespace (:func:`pid_space`), not the same hostname, which containers with host
networking share while each counts its own pids. Where that cannot be told (no ``/proc``),
only the heartbeat judges. A worker declared dead that was still running keeps its result
(:mod:`automl.late_results`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from automl.optuna_adapter import set_trial_state, set_trial_system_attr, set_trial_user_attr
from automl.trial_queue import retry_once

__all__ = ["beating", "sweep_stale", "stale_reason", "pid_space", "this_worker", "BEAT_SECONDS",
           "STALE_SECONDS"]

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


def pid_space() -> str | None:
    """Where this process's pid names this process: the kernel's boot id and the pid
    namespace, so two containers on one kernel (sharing a hostname, counting their own pids)
    differ; None where ``/proc`` does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot} {namespace}" if boot else None


def this_worker() -> dict:
    """Who runs a trial: pid and start time within its pid space (the hostname is for
    messages)."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": _process_started(os.getpid()), "pid_space": pid_space()}


def _alive(worker: dict) -> bool:
    """Whether the worker's process still runs; only meaningful in the worker's pid space."""
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
    set_trial_system_attr(study, trial, WORKER, this_worker())  # the claim is beat 0
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_SECONDS):
            try:
                set_trial_system_attr(study, trial, BEAT, time.time())
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


def stale_reason(trial: FrozenTrial, now: float, here: str | None) -> str | None:
    """Why a RUNNING trial is stale, or None while its worker may still be running it.
    ``here``: this process's :func:`pid_space`; a worker in it is looked up at once, any
    other (another machine, container or boot; a record without one) only by heartbeat."""
    worker = trial.system_attrs.get(WORKER)
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = trial.system_attrs.get(BEAT, started)
    if worker and here is not None and worker.get("pid_space") == here and not _alive(worker):
        return f"worker died (pid {worker['pid']} on {worker['host']} is gone)"
    if now - last > STALE_SECONDS:
        where = f"pid {worker['pid']} on {worker['host']}" if worker else "its worker"
        return f"worker died ({where} sent no heartbeat for {now - last:.0f} s)"
    return None


def sweep_stale(study: optuna.Study, running: Iterable[FrozenTrial] | None = None) -> int:
    """Fail every stale trial with its reason and retry its parameters once (when two
    processes sweep the same trial, the storage lets one of them fail it); ``running``: the
    study's RUNNING trials when the caller has just read them. How many this process failed."""
    now, here = time.time(), pid_space()
    if running is None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    failed = 0
    for trial in running:
        reason = stale_reason(trial, now, here)
        if reason is None:
            continue
        try:
            set_trial_user_attr(study, trial, "fail_reason", reason)
            if not set_trial_state(study, trial, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process swept it first
        retry_once(study, trial)
        failed += 1
    return failed
