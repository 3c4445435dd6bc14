"""Every use of Optuna's private API, behind one door.

Fault tolerance needs a few things Optuna's public API does not offer: claiming a waiting
trial without creating a new one when none is left (``Study.ask`` does), writing to a trial
that another process runs (the stale sweep), a heartbeat thread writing without a ``Trial``,
and reading a trial back from the storage after ``Study.tell``. Optuna keeps what does this
private (``Study._storage``, ``Study._study_id``, ``FrozenStudy._study_id``,
``Trial._trial_id``, ``FrozenTrial._trial_id``, ``BaseDistribution._contains``) and may change
it in any release, so no other module names it. pyproject.toml pins the Optuna major version
this module was written for (``WRITTEN_FOR``); tests/test_optuna_adapter.py is its contract on
journal, SQLite and PostgreSQL storages and fails first when an upgrade changes what it relies
on, and it greps automl/, plugins/ and bench/ for Optuna's private names outside this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy  # what get_all_studies returns; not exported

__all__ = ["WRITTEN_FOR", "PRIVATE_NAMES", "storage_of", "study_id", "trial_id",
           "get_frozen_trial", "claim_waiting_trial", "set_trial_state", "set_trial_user_attr",
           "set_trial_system_attr", "set_intermediate_value", "distribution_contains"]

#: The Optuna major version this module was written and contract-tested for (pyproject pins it).
WRITTEN_FOR = 5

#: Optuna's private attributes used here; a test fails when any other module names one.
PRIVATE_NAMES = ("_storage", "_study_id", "_trial_id", "_contains")


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage object the study reads and writes (``Study._storage``): for an RDB, Optuna's
    cache layer in front of the database, the very object ``tell`` writes through. Public API
    gives only the URL or object the study was created with, not the one it uses."""
    return study._storage


def study_id(study: optuna.Study | FrozenStudy) -> int:
    """The storage's id of a study (``_study_id``), for the storage's own methods such as
    ``get_all_trials``; ``FrozenStudy``, which ``BaseStorage.get_all_studies`` returns, keeps
    it private too (``get_study_id_from_name`` would cost one more round trip per study)."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``_trial_id``): every storage method that writes a trial
    takes it, and neither ``Trial`` nor ``FrozenTrial`` exposes it."""
    return trial._trial_id


def get_frozen_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the storage holds it now, in one read (``BaseStorage.get_trial``); the
    public way, ``study.get_trials()[trial.number]``, reads every trial of the study."""
    return storage_of(study).get_trial(trial_id(trial))


def claim_waiting_trial(study: optuna.Study, ticket: FrozenTrial) -> optuna.Trial | None:
    """Move a WAITING trial to RUNNING and return it as a ``Trial`` to train, or None when
    another process claimed or finished it first (the storage grants each one to exactly one
    claimant). This is ``Study.ask``'s private ``_pop_waiting_trial_id`` for one given trial:
    ``ask`` itself creates a new trial when the queue is empty, which would overrun a budget."""
    try:
        if not storage_of(study).set_trial_state_values(trial_id(ticket),
                                                        state=TrialState.RUNNING):
            return None
    except UpdateFinishedTrialError:
        return None
    return optuna.Trial(study, trial_id(ticket))  # what ask() builds around a popped id


def set_trial_state(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                    state: TrialState) -> bool:
    """Set the state of any trial of the study, also one another process runs (``tell`` only
    finishes trials with this process's sampler bookkeeping). Like the storage: False when a
    move to RUNNING lost to another claimant; ``UpdateFinishedTrialError`` when the trial is
    already finished (e.g. another process failed it first)."""
    return storage_of(study).set_trial_state_values(trial_id(trial), state=state)


def set_trial_user_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str,
                        value: Any) -> None:
    """Set a user attribute of any unfinished trial, also from a ``FrozenTrial`` (which has no
    setter) of a trial another process runs; ``UpdateFinishedTrialError`` once it finished."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str,
                          value: Any) -> None:
    """Set a system attribute of an unfinished trial (``Trial`` has no public setter for them
    any more); safe from a thread other than the trial's, such as its heartbeat.
    ``UpdateFinishedTrialError`` once it finished."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def set_intermediate_value(study: optuna.Study, trial: optuna.Trial, step: int,
                           value: float) -> None:
    """Record a trial's score at ``step`` in a multi-objective study, where ``Trial.report``
    refuses (it serves the pruner, which cannot judge several objectives): the curve still
    shows in ``automl show`` and the report. ``UpdateFinishedTrialError`` once it finished."""
    storage_of(study).set_trial_intermediate_value(trial_id(trial), step, float(value))


def distribution_contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (as a user writes it) lies in ``dist``: Optuna's own check
    (``BaseDistribution._contains`` on the internal representation, which honours log, step
    and choices exactly as sampling does), False for a value of the wrong type."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False
