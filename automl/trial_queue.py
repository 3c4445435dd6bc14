"""The trial budget as a queue inside the study's storage, shared by every process everywhere.

``--n-trials N`` puts N tickets (WAITING trials; the first carries the baseline's parameters)
into the study. A process trains a trial only after claiming a ticket, and the storage grants
each ticket to exactly one claimant, so any number of processes on any number of machines run
exactly N trials together, each once. A trial whose worker died, or was stopped by a signal,
gets one retry ticket with its parameters; retries are not counted in N.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.optuna_adapter import claim_waiting_trial

__all__ = ["plan_trials", "wait_for_plan", "claim_trial", "retry_once", "budget_trials",
           "duplicate_of", "BUDGET", "RETRY_OF", "WARM_START"]

BUDGET = "n_trials"  # study user attr: the budget planned so far (set after its tickets exist)
RETRY_OF = "retry_of"  # trial user attr: the number of the trial this one retries
WARM_START = "warm_start"  # trial user attr: the known recipe a ticket carries
PLAN_WAIT_SECONDS = 60.0  # how long a joining process waits for the creator's tickets


def budget_trials(study: optuna.Study,
                  trials: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Trials (and tickets) counted in ``--n-trials``: every one except retries (of
    ``trials``, the study's trials just read, when given)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    return [t for t in trials if RETRY_OF not in t.user_attrs]


def wait_for_plan(study: optuna.Study, created: bool) -> None:
    """A process joining a brand-new study waits for its creator's tickets, instead of adding
    its own (which would double the budget)."""
    if created or study.user_attrs.get(BUDGET) is not None or _started(study):
        return
    deadline = time.monotonic() + PLAN_WAIT_SECONDS
    while study.user_attrs.get(BUDGET) is None and time.monotonic() < deadline:
        time.sleep(0.5)


def plan_trials(study: optuna.Study, n_trials: int, baseline: dict[str, Any],
                known: list[tuple[str, dict[str, Any]]] = ()) -> None:
    """Make the study hold ``n_trials`` budget trials and tickets (raising --n-trials later
    adds the missing tickets; lowering it leaves the extra tickets unclaimed). A new study's
    first tickets are the baseline, then the ``known`` recipes (warm start), as far as the
    budget goes; the rest are the sampler's."""
    planned = study.user_attrs.get(BUDGET)
    if planned is not None and planned >= n_trials:
        return
    missing = n_trials - len(budget_trials(study))
    if missing > 0 and not study.trials:
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
        missing -= 1
        for name, params in known[:max(missing, 0)]:
            study.enqueue_trial(params, user_attrs={WARM_START: name})
            missing -= 1
    for _ in range(max(missing, 0)):
        study.enqueue_trial({})
    study.set_user_attr(BUDGET, n_trials)


def _started(study: optuna.Study) -> bool:
    return any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def claim_trial(study: optuna.Study, retries_only: bool = False,
                trials: Sequence[FrozenTrial] | None = None) -> optuna.Trial | None:
    """Claim a waiting ticket (the storage lets exactly one process move it to RUNNING), or
    None when none is left; ``retries_only`` once the budget is used up. ``trials``: the
    study's trials just read (a ticket another process took since then is skipped).
    ``Study.ask`` claims the same way, but creates a new trial when the queue is empty: more
    than the budget."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for ticket in (t for t in trials if t.state == TrialState.WAITING):
        if retries_only and RETRY_OF not in ticket.user_attrs:
            continue
        trial = claim_waiting_trial(study, ticket)
        if trial is not None:
            return trial
    return None


def retry_once(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    """Queue the trial's parameters again, unless the trial already was a retry."""
    if RETRY_OF in trial.user_attrs:
        return
    attrs = {RETRY_OF: trial.number}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    if WARM_START in trial.user_attrs:
        attrs[WARM_START] = trial.user_attrs[WARM_START]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def duplicate_of(study: optuna.Study, trial: optuna.Trial,
                 trials: Sequence[FrozenTrial] | None = None) -> int | None:
    """The number of a completed or pruned trial with exactly this trial's parameters:
    training it again would only repeat that result. (A retried trial is FAIL, never one.)
    ``trials``: the study's trials read when this one was claimed, when given."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    for other in trials:
        if other.state in (TrialState.COMPLETE, TrialState.PRUNED) and \
                other.params == trial.params:
            return other.number
    return None
