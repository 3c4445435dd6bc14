"""A trial declared dead while its worker still ran it: the worker keeps its result.

Another process fails a RUNNING trial whose heartbeat stopped (a suspended machine, a storage
outage longer than :data:`automl.heartbeat.STALE_SECONDS`) and queues its parameters once
more; from then on the storage refuses every write to the trial. The worker that still runs it
writes through :class:`TrialWrites`, which notices the refusal, keeps the values itself and
lets training go on to the end without pruning (the pruner no longer sees the trial). A
finished result, complete or pruned, is then recorded as a new trial with the same
parameters, user attributes and epoch scores, marked ``late_result_of``; like a retry it does
not count in the budget, and the retry ticket finds its parameters done and is not trained
again. A failure is not recorded twice: the trial is failed either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from automl.optuna_adapter import set_intermediate_value
from automl.trial_queue import RETRY_OF

__all__ = ["TrialWrites", "record_late_result", "result_holder", "LATE_RESULT_OF"]

LATE_RESULT_OF = "late_result_of"  # user attr: the swept trial whose result this trial holds


class TrialWrites:
    """Every write of one running trial (user attrs, epoch scores, pruning, the final tell),
    kept here as well, so that a sweep by another process loses none of them."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        self.study, self.trial = study, trial
        #: Several objectives: Optuna has no pruning, so scores are recorded, never judged.
        self.multi_objective = len(study.directions) > 1
        self.swept = False  # the storage refused a write: another process failed the trial
        self.user_attrs: dict[str, Any] = {}
        self.scores: dict[int, float] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
        self._write(self.trial.set_user_attr, key, value)

    def report(self, value: float, step: int) -> None:
        self.scores[step] = value
        if self.multi_objective:
            self._write(set_intermediate_value, self.study, self.trial, step, value)
        else:
            self._write(self.trial.report, value, step)

    def should_prune(self) -> bool:
        """The pruner's verdict; never once swept (the trial then trains to its end)."""
        return not self.swept and not self.multi_objective and self.trial.should_prune()

    def tell(self, state: TrialState, value: float | list[float] | None = None) -> int:
        """Finish the trial (``value``: one per metric, or the one); the number of the trial
        that holds its result: itself, or a new one when it was swept (a failure stays with
        the swept trial)."""
        if not self.swept:
            try:
                told = self.study.tell(self.trial, value, state=state, skip_if_finished=True)
                self.swept = told.state != state  # finished before: failed by a sweep
            except UpdateFinishedTrialError:  # swept between tell's check and its write
                self.swept = True
        if not self.swept or state == TrialState.FAIL:
            return self.trial.number
        return record_late_result(self.study, self.trial, state, value, self.user_attrs,
                                  self.scores)

    def _write(self, write, *args: Any) -> None:
        if self.swept:
            return
        try:
            write(*args)
        except UpdateFinishedTrialError:
            self.swept = True


def record_late_result(study: optuna.Study, trial: optuna.Trial, state: TrialState,
                       value: float | list[float] | None, user_attrs: dict[str, Any],
                       scores: dict[int, float]) -> int:
    """Add the finished result of a swept ``trial`` as a new trial; its number."""
    attrs = {**trial.user_attrs, **user_attrs, LATE_RESULT_OF: trial.number}
    attrs.setdefault(RETRY_OF, trial.number)  # not counted in the budget, as a retry
    study.add_trial(create_trial(
        state=state, values=_values(value) if state == TrialState.COMPLETE else None,
        params=trial.params, distributions=trial.distributions, user_attrs=attrs,
        intermediate_values=dict(scores)))
    return result_holder(study.get_trials(deepcopy=False), trial.number).number


def _values(value: float | list[float] | None) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]


def result_holder(trials: Sequence[FrozenTrial], number: int) -> FrozenTrial:
    """The trial holding trial ``number``'s result: its late record when it was swept while
    it ran, else the trial itself."""
    late = [t for t in trials if t.user_attrs.get(LATE_RESULT_OF) == number]
    return late[-1] if late else next(t for t in trials if t.number == number)

