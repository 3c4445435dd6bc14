"""The per-process trial loop: claim a ticket, train it, record how it ended, repeat.

Each trial samples a Recipe from the space, trains it with a fresh plugin manager, reports the
validation metric after every epoch (so the pruner can stop it), and stores its full recipe
and final metrics as user attributes. ``best_recipe.yaml`` is rewritten whenever the best
improves, so an interrupted search loses nothing.

A trial's fixed cost is storage round trips, so the loop reads the study's trials once per
claim and once per finished trial, and sweeps for stale trials on a timer (and whenever no
ticket is left), not before every claim (see bench/overhead.py).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from automl.data import DataBundle, load_data
from automl.failures import (
    TRACEBACK_LOG,
    check_repeated_failure,
    failure_reason,
    traceback_text,
    write_trial_log,
)
from automl.heartbeat import BEAT_SECONDS, beating, sweep_stale
from automl.interrupts import Interrupted, raise_if_interrupted
from automl.late_results import TrialWrites, result_holder
from automl.objectives import objective_values, pareto_front
from automl.provenance import ENVIRONMENT, environment
from automl.recipe import Recipe
from automl.search_context import SearchContext
from automl.space import SearchSpace
from automl.stages import STAGE_SECONDS, StageDirectory, run_stage_dir
from automl.state import TrainState
from automl.storage import StorageFailed
from automl.study_lifecycle import export_best, recording
from automl.trainer import TrainingDiverged, release_memory, train
from automl.trial_queue import budget_trials, claim_trial, duplicate_of, retry_once
from automl.trial_ranks import RankFailed, trial_ranks

__all__ = ["run_trials", "trainer_for", "NonFiniteScore", "ENDED_EARLY", "SWEEP_SECONDS"]

ENDED_EARLY = "ended_early"  # the user attr saying why a trial stopped before its last epoch
#: How often a process sweeps the study for trials whose worker died (also once at start and
#: whenever no ticket is left); a dead worker's trial is retried within this plus its
#: staleness (:data:`automl.heartbeat.STALE_SECONDS`).
SWEEP_SECONDS = BEAT_SECONDS


class NonFiniteScore(ArithmeticError):
    """The searched metric is NaN or infinite: the trial can never be compared."""


def run_trials(study: optuna.Study, space: SearchSpace, context: SearchContext,
               data: DataBundle) -> int:
    """Claim and train tickets in this process, one after another, until none is left, the
    budget is reached or time runs out; the number of trials run."""
    settings = context.settings
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    swept = None  # when this process last swept for stale trials
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        with recording(settings, "claiming a trial"):
            trials = study.get_trials(deepcopy=False)
            due = swept is None or time.monotonic() - swept > SWEEP_SECONDS
            if due:
                swept, trials = _sweep(study, trials)
            trial = _claim(study, trials, settings.n_trials)
            if trial is None and not due:  # no ticket left: unless a dead worker's retry
                swept, trials = _sweep(study, trials)
                trial = _claim(study, trials, settings.n_trials)
        if trial is None:
            break
        trials = TrialRun(study, trial, space, context, data, trials).run()
        ran += 1
        check_repeated_failure(trials)  # a broken setup stops the search, naming the reason
    return ran


def _sweep(study: optuna.Study, trials: Sequence[FrozenTrial]
           ) -> tuple[float, Sequence[FrozenTrial]]:
    """Fail the stale trials among ``trials``; when, and the trials as they are now."""
    if sweep_stale(study, [t for t in trials if t.state == TrialState.RUNNING]):
        trials = study.get_trials(deepcopy=False)  # their retry tickets
    return time.monotonic(), trials


def _claim(study: optuna.Study, trials: Sequence[FrozenTrial],
           n_trials: int) -> optuna.Trial | None:
    used = sum(t.state != TrialState.WAITING for t in budget_trials(study, trials))
    return claim_trial(study, retries_only=used >= n_trials, trials=trials)


class TrialRun:
    """One claimed trial in this process: trains it, records how it ended, reports it.

    Keeps a weak reference to the trial's model, to check after the trial that it was freed
    (:func:`automl.trainer.release_memory`)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, space: SearchSpace,
                 context: SearchContext, data: DataBundle, trials: Sequence[FrozenTrial]):
        self.study, self.trial, self.space, self.context, self.data = \
            study, trial, space, context, data
        self.settings = context.settings
        self.known = trials  # the study's trials when this one was claimed
        self.model: weakref.ref | None = None
        self.writes = TrialWrites(study, trial)  # a sweep by another process loses nothing
        self.stage_seconds = 0.0  # spent obtaining stage artifacts (not training time)

    def run(self) -> list[FrozenTrial]:
        """Train, tell the study, export a new best, report; a signal fails the trial and is
        re-raised. The study's trials after this one ended."""
        study, trial = self.study, self.trial
        try:
            with recording(self.settings, f"running trial {trial.number}"), \
                    beating(study, trial):
                try:
                    state, value = self._train()
                except KeyboardInterrupt as exc:
                    name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
                    self.writes.set_user_attr("fail_reason", f"interrupted ({name})")
                    self.writes.tell(TrialState.FAIL)
                    retry_once(study, trial)
                    raise
                trials = self._tell(state, value)
        finally:
            release_memory(self.context.device, self.model)
        frozen = result_holder(trials, trial.number)  # a new trial when it was swept
        new_best = frozen.state == TrialState.COMPLETE and _new_best(study, trials, frozen)
        if new_best:
            export_best(study, self.settings.run_dir)
        self.context.reporter.trial_end(study, frozen, new_best)
        return trials

    def _tell(self, state: TrialState, value: list[float] | None) -> list[FrozenTrial]:
        self.writes.tell(state, value)  # swept meanwhile: the result is kept as a new trial
        return self.study.get_trials(deepcopy=False)

    def _train(self) -> tuple[TrialState, list[float] | None]:
        """Sample and train the trial; how it ended: COMPLETE with its values (one per
        metric of the study), PRUNED or FAIL
        (the reason stored as the ``fail_reason`` user attr, a failure's traceback in its log
        file). A trial that ended before its last epoch says why in ``ended_early``."""
        trial, settings = self.trial, self.settings
        recipe = self.space.sample(trial)
        self.writes.set_user_attr("recipe", recipe.to_dict())
        self.writes.set_user_attr(ENVIRONMENT, environment())  # the versions provenance names
        self.context.reporter.trial_start(trial, recipe)
        same = duplicate_of(self.study, trial, self.known)
        if same is not None:
            reason = f"same parameters as trial {same}, not trained again"
            self.writes.set_user_attr("fail_reason", reason)
            self.writes.set_user_attr(ENDED_EARLY, reason)
            return TrialState.PRUNED, None
        started = time.perf_counter()
        failure = pm = None
        try:
            pm = stage_aware_manager(self.context, recipe)
            with trial_ranks(self.context, recipe, stage_aware_manager):  # --gpus-per-trial
                history = train(recipe, self.data, pm, device=self.context.device,
                                on_epoch=self._on_epoch, compile=settings.compile).history
        except optuna.TrialPruned:
            return TrialState.PRUNED, None
        except StorageFailed:
            raise
        except RankFailed as exc:  # another rank ended the trial; a killed one is retried
            failure, ended, trace = str(exc), TrialState.FAIL, traceback_text(exc)
            if exc.retry:
                retry_once(self.study, trial)
        except (TrainingDiverged, NonFiniteScore) as exc:  # pruned: the values, not the code
            failure, ended = str(exc), TrialState.PRUNED
        except Exception as exc:  # the trial fails, the search goes on
            failure, ended = failure_reason(exc, pm), TrialState.FAIL
            trace = traceback_text(exc)  # text only: the traceback itself is not kept
        if failure is not None:  # handled here, not inside `except`: no traceback keeps the
            self.writes.set_user_attr("fail_reason", failure)  # trial's tensors alive
            if ended == TrialState.PRUNED:
                self.writes.set_user_attr(ENDED_EARLY, failure)
            else:
                log = write_trial_log(settings.run_dir, trial.number, failure, trace)
                self.writes.set_user_attr(TRACEBACK_LOG, str(log.resolve()))
            return ended, None
        final = history[-1]
        self.writes.set_user_attr("metrics", final)
        self.writes.set_user_attr("epochs_run", len(history))
        self.writes.set_user_attr(
            "seconds", round(time.perf_counter() - started - self.stage_seconds, 2))
        self.writes.set_user_attr("threads", torch.get_num_threads())  # CPU results depend on it
        return TrialState.COMPLETE, objective_values(final, settings.metrics)

    def _on_epoch(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each epoch: report the score, let the pruner judge, record an early end."""
        raise_if_interrupted()  # a stop signal a library's GC callback swallowed
        trial, settings = self.trial, self.settings
        self.model = weakref.ref(state.model)
        epoch = state.epoch + 1
        stage_seconds = sum(state.extras.get(STAGE_SECONDS, {}).values())
        if stage_seconds != self.stage_seconds:  # stages ran (or were read) before this epoch
            self.stage_seconds = stage_seconds
            self.writes.set_user_attr("stage_seconds", round(stage_seconds, 2))
        values = objective_values(metrics, settings.metrics)  # a missing one: named
        for name, value in zip(settings.metrics, values, strict=True):
            if not math.isfinite(value):  # never reported: a pruner would take inf as best
                raise NonFiniteScore(f"{name} is {value} in epoch {epoch}")
        self.writes.report(values[0], epoch)  # the curve (and pruning) of the first metric
        self.context.reporter.epoch(trial, epoch, state.epochs, metrics)
        if state.stop_training and epoch < state.epochs:  # a technique ended it: say why
            why = state.stop_reason or "a technique ended training"
            self.writes.set_user_attr(ENDED_EARLY,
                                      f"{why} (after epoch {epoch} of {state.epochs})")
        last = epoch == state.epochs or state.stop_training
        if not last and self.writes.should_prune():  # a finished run completes
            self.writes.set_user_attr("epochs_run", epoch)
            self.writes.set_user_attr(ENDED_EARLY,
                                      f"pruned after epoch {epoch} of {state.epochs}: behind "
                                      f"the other trials there ({settings.pruner})")
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


def _new_best(study: optuna.Study, trials: Sequence[FrozenTrial], trial: FrozenTrial) -> bool:
    """Whether ``trial`` is the study's new best; with several metrics, whether it joined the
    Pareto front (the trial named best may then change)."""
    if len(study.directions) > 1:
        return any(t.number == trial.number for t in pareto_front(trials, study.directions))
    return _best_number(trials, study.directions[0]) == trial.number


def _best_number(trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection
                 ) -> int | None:
    """The number of the best completed trial, as ``Study.best_trial`` names it (the first of
    equal values), without another storage read."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = 1 if direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(complete, key=lambda t: (sign * t.value, -t.number)).number


def stage_aware_manager(context: SearchContext, recipe: Recipe):
    """The trial's plugin manager, its stages cached in the run folder (automl.stages): built
    once per study, whichever trial or process needs one first."""
    pm = context.training_manager(recipe)
    pm.register(StageDirectory(run_stage_dir(context.settings.run_dir)))
    return pm


def trainer_for(context: SearchContext):
    """``train_once(recipe) -> (score, epochs)`` for confirmation runs: no pruning, and a
    failed or diverged run scores NaN."""
    settings, device = context.settings, context.device

    def train_once(recipe: Recipe) -> tuple[float, int]:
        try:
            pm = stage_aware_manager(context, recipe)
            with trial_ranks(context, recipe, stage_aware_manager):  # as the trials train
                history = train(recipe, load_data(recipe.data), pm, device=device,
                                compile=settings.compile).history
            return float(history[-1][settings.metric]), len(history)
        except Exception:  # the run failed: it counts against its recipe
            return math.nan, 0
        finally:
            release_memory(device)

    return train_once
