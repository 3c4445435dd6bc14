"""Why a trial failed, in one line: out of memory, or which plugin's hook raised what.

A search must outlive its trials: an exception inside one training fails that trial (the
reason is stored on it and printed, the full traceback written to the trial's log in the run
folder) and the study goes on with the next, unless the first trials all fail the same way.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from pathlib import Path

import pluggy
import torch
from optuna.trial import FrozenTrial, TrialState

from automl.errors import UserError, exception_line
from automl.yamlio import write_atomic

__all__ = ["failure_reason", "raising_hook", "traceback_text", "write_trial_log",
           "trial_log_path", "RepeatedFailure", "STOP_AFTER", "check_repeated_failure",
           "TRACEBACK_LOG"]

OOM = "oom"
TRIAL_LOGS = "trials"  # the run folder's folder of failed trials' tracebacks
TRACEBACK_LOG = "traceback_log"  # the trial's user attr naming its log file
#: A search stops when this many trials failed with one reason and none has succeeded yet:
#: a broken setup (a model that cannot take the images, a missing library) fails every
#: trial, and running the rest of the budget only buries the reason. One such failure may be
#: one bad draw, and the baseline and a known recipe may share a flaw; three are a pattern.
STOP_AFTER = 3


class RepeatedFailure(UserError):
    """The first trials of a search all failed the same way: the search stops (exit 1)."""

    exit_code = 1


def failure_reason(exc: BaseException, pm: pluggy.PluginManager | None) -> str:
    """``oom`` for out-of-memory errors, else ``plugin P, hook H: Type: message`` when a
    technique's hook raised (``Type: message`` when the core did)."""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return OOM
    text = exception_line(exc)
    where = raising_hook(exc, pm) if pm is not None else None
    return f"plugin {where[0]}, hook {where[1]}: {text}" if where else text


def raising_hook(exc: BaseException, pm: pluggy.PluginManager) -> tuple[str, str] | None:
    """(plugin name, hook name) of the innermost hook implementation in the traceback."""
    impls = {}
    for name, plugin in pm.list_name_plugin():
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impls[impl.function.__code__] = (name, caller.name)
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        found = impls.get(frame.f_code, found)
    return found


def traceback_text(exc: BaseException) -> str:
    """The full traceback as text: called inside ``except``, so only the string outlives it
    (a kept traceback would keep the trial's tensors alive)."""
    return "".join(traceback.format_exception(exc))


def trial_log_path(run_dir: Path, number: int) -> Path:
    return run_dir / TRIAL_LOGS / f"trial-{number:05d}.log"


def write_trial_log(run_dir: Path, number: int, reason: str, trace: str) -> Path:
    """Write a failed trial's reason and traceback to its log file; the file's path."""
    path = trial_log_path(run_dir, number)
    write_atomic(path, f"trial {number} failed: {reason}\n\n{trace}")
    return path


def check_repeated_failure(trials: Iterable[FrozenTrial]) -> None:
    """Raise :class:`RepeatedFailure` when the study's last :data:`STOP_AFTER` finished trials
    failed with one reason and no trial has completed or been pruned: the first trials, or
    the first ones after a resume that changed nothing. Interrupted trials do not count."""
    finished = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                        TrialState.FAIL)
                       and not str(t.user_attrs.get("fail_reason", "")).startswith(
                           "interrupted")), key=lambda t: t.number)
    if any(t.state != TrialState.FAIL for t in finished) or len(finished) < STOP_AFTER:
        return
    last = finished[-STOP_AFTER:]
    reasons = {t.user_attrs.get("fail_reason") for t in last}
    if len(reasons) != 1:
        return
    reason = reasons.pop()
    log = last[-1].user_attrs.get(TRACEBACK_LOG)
    where = f"; trial {last[-1].number}'s traceback: {log}" if log else ""
    raise RepeatedFailure(
        f"stopped: the first {len(finished)} trials all failed with the same reason "
        f"({reason}){where}; fix it, then run the same command to resume")
