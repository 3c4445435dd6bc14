"""The Optuna driver: study, sampler/pruner factories, the objective, and the best-recipe export.

Each trial samples a Recipe from the space, trains it with a fresh plugin manager, reports the
validation metric after every epoch (so the pruner can stop it), and stores its full recipe
and final metrics as user attributes. ``best_recipe.yaml`` is rewritten whenever the best
improves, so an interrupted search loses nothing.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from automl.confirm import chosen_trial, confirm
from automl.data import DataBundle, check_data, load_data
from automl.discovery import technique_catalog, training_manager
from automl.errors import UserError
from automl.failures import (
    TRACEBACK_LOG,
    check_repeated_failure,
    failure_reason,
    traceback_text,
    write_trial_log,
)
from automl.fidelity import FIRST_RUNG, RUNG_TRUST, TrustedRungPruner
from automl.heartbeat import beating, sweep_stale
from automl.interrupts import Interrupted, raise_if_interrupted
from automl.provenance import ENVIRONMENT, environment, with_provenance
from automl.recipe import Recipe
from automl.space import SearchSpace
from automl.state import TrainState
from automl.storage import (
    STORAGE_ERRORS,
    StorageFailed,
    is_rdb_url,
    open_storage,
    storage_failure,
)
from automl.study_select import open_study, select_study
from automl.trainer import TrainingDiverged, release_memory, resolve_device, train
from automl.trial_queue import (
    budget_trials,
    claim_trial,
    duplicate_of,
    plan_trials,
    retry_once,
    wait_for_plan,
)
from automl.warm_start import warm_start_params
from automl.yamlio import write_atomic

__all__ = ["SearchSettings", "Reporter", "run_search", "create_study", "run_trials",
           "export_best", "make_sampler", "make_pruner", "open_study", "select_study",
           "trial_recipe", "FINISHED"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


BEST_RECIPE = "best_recipe.yaml"
ENDED_EARLY = "ended_early"  # the user attr saying why a trial stopped before its last epoch


class Reporter(Protocol):
    """What the driver tells the user about; see :mod:`automl.report` for the console one."""

    def search_start(self, study: optuna.Study, settings: SearchSettings, todo: int) -> None: ...
    def trial_start(self, trial: optuna.Trial, recipe: Recipe) -> None: ...
    def epoch(self, trial: optuna.Trial, epoch: int, epochs: int,
              metrics: dict[str, float]) -> None: ...
    def trial_end(self, study: optuna.Study, trial: FrozenTrial, new_best: bool) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class SearchSettings:
    """Run settings: the space's ``study:`` section with command-line overrides applied."""

    study_name: str
    run_dir: Path
    storage: str | None
    n_trials: int
    timeout: float | None
    seed: int
    sampler: str
    pruner: str
    metric: str
    direction: str
    min_resource: int | str = "auto"  # first rung of Hyperband/SHA, or the median's warmup
    reduction_factor: int = 3
    startup_trials: int = 5  # random trials before TPE models; the median pruner's start-up
    rung_trust: float = 0.5  # prune only at epochs ranking trials like this (Spearman's rho)
    warm_start: bool = True  # evaluate the known recipes right after the baseline
    confirm_top: int | str = "auto"  # re-run this many of the best trials with more seeds
    confirm_seeds: int = 2
    confirm_splits: bool = False  # confirmation runs also draw another validation split
    device: str | None = None
    jobs: int = 1  # trials running at once (per GPU with ``gpus``), each in its own process
    gpus: str | None = None  # "all" or "0,2": one set of ``jobs`` workers per listed GPU
    compile: bool = False  # train through torch.compile
    log: tuple[str, ...] = ()  # experiment trackers (automl.tracking): tensorboard, mlflow

    @classmethod
    def from_space(cls, space: SearchSpace, *, study_name: str, run_dir: Path,
                   storage: str | None = None, device: str | None = None, jobs: int = 1,
                   gpus: str | None = None, compile: bool = False,
                   log: tuple[str, ...] = (), **overrides) -> SearchSettings:
        study = {**space.study, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(study_name=study_name, run_dir=run_dir, storage=storage,
                   n_trials=study["n_trials"], timeout=study["timeout"], seed=study["seed"],
                   sampler=study["sampler"], pruner=study["pruner"], metric=study["metric"],
                   direction=study["direction"], min_resource=study["min_resource"],
                   reduction_factor=study["reduction_factor"],
                   startup_trials=study["startup_trials"], rung_trust=study["rung_trust"],
                   warm_start=study["warm_start"],
                   confirm_top=study["confirm_top"], confirm_seeds=study["confirm_seeds"],
                   confirm_splits=study["confirm_splits"], device=device, jobs=jobs, gpus=gpus,
                   compile=compile, log=tuple(log))

    def first_rung(self, max_epochs: int) -> int:
        """The earliest epoch a trial may be pruned at: unless set, the longest training over
        reduction_factor², so that two rungs come before the end. Whether a rung is used is
        then up to the evidence (:class:`automl.fidelity.TrustedRungPruner`)."""
        if self.min_resource == "auto":
            return max(1, round(max_epochs / self.reduction_factor ** 2))
        return min(int(self.min_resource), max_epochs)

    def confirmations(self) -> int:
        """How many of the best trials are confirmed: "auto" is one per 20 trials, at least
        one from 10 trials on, at most 3 (with 2 seeds each and the baseline's, 4 to 8 more
        trainings: a fifth of a 20-trial budget, a tenth of 60)."""
        if self.confirm_top == "auto":
            return 0 if self.n_trials < 10 else min(3, max(1, self.n_trials // 20))
        return int(self.confirm_top)


def make_sampler(name: str, seed: int, startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """TPE (seeded, multivariate over conditional groups) by default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                              multivariate=True, group=True, constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"unknown sampler '{name}'; valid: tpe, random, cmaes, gp")


def make_pruner(name: str, epochs: int, min_resource: int = 1, reduction_factor: int = 3,
                startup_trials: int = 3, trust: float = -1) -> optuna.pruners.BasePruner:
    """Hyperband over epochs by default; ``none`` trains every trial to the end.

    ``epochs`` is the longest training a trial of the space can run (techniques such as
    long training multiply the space's epochs), so Hyperband's brackets span every trial.
    No trial is judged before ``min_resource`` epochs, nor at an epoch whose scores have not
    been seen to rank trials like their final scores (rank correlation ``trust``).
    """
    if name == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=epochs,
                                               reduction_factor=reduction_factor)
    elif name == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                            n_warmup_steps=min_resource - 1)
    elif name == "sha":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                       reduction_factor=reduction_factor)
    elif name == "none":
        return optuna.pruners.NopPruner()
    else:
        raise UserError(f"unknown pruner '{name}'; valid: hyperband, median, sha, none")
    return TrustedRungPruner(inner, trust)


def run_search(space: SearchSpace, settings: SearchSettings, reporter: Reporter,
               data: DataBundle | None = None) -> optuna.Study:
    """Run (or resume, or join) the study until its ``n_trials`` tickets are used up or time
    runs out (see :mod:`automl.trial_queue`).

    With ``settings.jobs`` > 1 or ``settings.gpus`` the trials run in worker processes on the
    same storage (see :mod:`automl.workers`); otherwise in this process.
    """
    from automl.tracking import tracked
    from automl.workers import run_workers, worker_devices

    devices = worker_devices(settings.jobs, settings.gpus, settings.device)
    reporter = tracked(reporter, settings)  # a tracker's missing package: before any write
    for device in set(devices):  # an unusable device stops the search before it starts
        resolve_device(device)
    if data is None and len(devices) > 1:  # each worker loads it: keep no copy here
        check_data(space.data)  # user errors (settings, missing files) before any write
    elif data is None:
        data = load_data(space.data)  # user errors before any write
    study = create_study(space, settings)
    todo = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    reporter.search_start(study, settings, todo)
    if todo and len(devices) > 1:
        try:
            run_workers(space, settings, devices, todo)
        except UserError:  # the workers stopped: on one repeated failure, name it
            check_repeated_failure(study.get_trials(deepcopy=False))
            raise
    elif todo:
        run_trials(study, space, settings, reporter, data, devices[0])
    if settings.confirmations() and _all_finished(study):
        with _recording(settings, "confirming the best trials"):
            confirm(study, settings.confirmations(), settings.confirm_seeds,
                    settings.confirm_splits, _trainer_for(settings, devices[0]), reporter.note)
    export_best(study, settings.run_dir)
    return study


def _all_finished(study: optuna.Study) -> bool:
    """Every ticket trained: confirmation compares finished trials only (another process
    still working on the study confirms when it is done)."""
    return not study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))


def _trainer_for(settings: SearchSettings, device_name: str | None):
    """``train_once(recipe) -> (score, epochs)`` for confirmation runs: no pruning, and a
    failed or diverged run scores NaN."""
    catalog = technique_catalog()
    device = resolve_device(device_name)

    def train_once(recipe: Recipe) -> tuple[float, int]:
        try:
            pm = training_manager(recipe, catalog)
            history = train(recipe, load_data(recipe.data), pm, device=device,
                            compile=settings.compile).history
            return float(history[-1][settings.metric]), len(history)
        except Exception:  # the run failed: it counts against its recipe
            return math.nan, 0
        finally:
            release_memory(device)

    return train_once


def create_study(space: SearchSpace, settings: SearchSettings) -> optuna.Study:
    """Create the study, or join it, refusing another objective or space; then make it hold
    ``n_trials`` tickets (the first one the baseline)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.sampler == "cmaes" and is_rdb_url(settings.storage) and \
            not settings.storage.startswith("sqlite"):
        raise UserError("sampler cmaes keeps pickled state in the storage, which every worker "
                        "unpickles: anyone who can write to a shared database could run code "
                        "on every worker; use tpe or gp, or a journal/SQLite file")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage, settings.run_dir)
    epochs = space.max_epochs()
    pruner = make_pruner(settings.pruner, epochs, settings.first_rung(epochs),
                         settings.reduction_factor, settings.startup_trials, settings.rung_trust)
    with _recording(settings, "opening the study"):
        try:
            study = optuna.create_study(study_name=settings.study_name, storage=storage,
                                        pruner=pruner, direction=settings.direction)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=settings.study_name, storage=storage,
                                      pruner=pruner)
            created = False
        if created:
            study.set_user_attr(FIRST_RUNG, settings.first_rung(epochs))
            study.set_user_attr("metric", settings.metric)
            study.set_user_attr("space", space.source)
            study.set_user_attr("space_definition", space.definition())
        wait_for_plan(study, created)
    _check_same_study(study, space, settings)
    with _recording(settings, "recording the pruning threshold"):
        if study.user_attrs.get(RUNG_TRUST) != settings.rung_trust:
            study.set_user_attr(RUNG_TRUST, settings.rung_trust)  # for `automl show`
    with _recording(settings, "queueing the trials"):
        known = warm_start_params(space, settings.n_trials) if settings.warm_start else []
        plan_trials(study, settings.n_trials, space.baseline_params(), known)
        tried = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings.sampler, sampler_seed(settings.seed, tried, created),
                                 settings.startup_trials)
    return study


def sampler_seed(seed: int, tried: int, created: bool) -> int:
    """The seed itself for the process that creates the study (a sequential search is
    reproducible); any other process, resuming or joining, mixes in the trials already run and
    its own identity, so it neither draws the first run's parameters again nor the same ones
    as a process that joined at the same moment."""
    if created:
        return seed
    host = zlib.crc32(socket.gethostname().encode())
    return int(np.random.SeedSequence([seed, tried, os.getpid(), host]).generate_state(1)[0])


class NonFiniteScore(ArithmeticError):
    """The searched metric is NaN or infinite: the trial can never be compared."""


@contextmanager
def _recording(settings: SearchSettings, doing: str):
    """Storage calls: an exception from them is a storage failure with its real cause."""
    try:
        yield
    except STORAGE_ERRORS as exc:
        raise storage_failure(exc, settings.storage, doing) from exc


def run_trials(study: optuna.Study, space: SearchSpace, settings: SearchSettings,
               reporter: Reporter, data: DataBundle, device_name: str | None) -> int:
    """Claim and train tickets in this process, one after another, until none is left, the
    budget is reached or time runs out; the number of trials run."""
    catalog = technique_catalog()
    device = resolve_device(device_name)
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        with _recording(settings, "claiming a trial"):
            sweep_stale(study)
            trial = claim_trial(study, retries_only=_budget_used(study, settings.n_trials))
        if trial is None:
            break
        _run_trial(study, trial, space, settings, reporter, data, catalog, device)
        ran += 1
        with _recording(settings, "reading the trials"):
            trials = study.get_trials(deepcopy=False)
        check_repeated_failure(trials)  # a broken setup stops the search, naming the reason
    return ran


def _budget_used(study: optuna.Study, n_trials: int) -> bool:
    return sum(t.state != TrialState.WAITING for t in budget_trials(study)) >= n_trials


def _run_trial(study: optuna.Study, trial: optuna.Trial, space: SearchSpace,
               settings: SearchSettings, reporter: Reporter, data: DataBundle,
               catalog: dict, device: torch.device) -> None:
    """Train one claimed trial and record how it ended; a signal fails it and is re-raised."""
    model: list[weakref.ref] = []  # the trial's model, to check that it was freed
    try:
        with _recording(settings, f"running trial {trial.number}"), beating(study, trial):
            try:
                state, value = _train(trial, study, space, settings, reporter, data, catalog,
                                      device, model)
            except KeyboardInterrupt as exc:
                name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
                trial.set_user_attr("fail_reason", f"interrupted ({name})")
                study.tell(trial, state=TrialState.FAIL)
                retry_once(study, trial)
                raise
            try:
                study.tell(trial, value, state=state)
            except UpdateFinishedTrialError:  # swept as stale by another process meanwhile
                pass
            frozen = study._storage.get_trial(trial._trial_id)
    finally:
        release_memory(device, model[0] if model else None)
    new_best = frozen.state == TrialState.COMPLETE and study.best_trial.number == frozen.number
    if new_best:
        export_best(study, settings.run_dir)
    reporter.trial_end(study, frozen, new_best)


def _train(trial: optuna.Trial, study: optuna.Study, space: SearchSpace,
           settings: SearchSettings, reporter: Reporter, data: DataBundle, catalog: dict,
           device: torch.device, model: list[weakref.ref]) -> tuple[TrialState, float | None]:
    """Sample and train the trial; how it ended: COMPLETE with its value, PRUNED or FAIL (the
    reason stored as the ``fail_reason`` user attr, a failure's traceback in its log file).
    A trial that ended before its last epoch says why in the ``ended_early`` user attr."""
    recipe = space.sample(trial)
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr(ENVIRONMENT, environment())  # the versions a recipe's provenance names
    reporter.trial_start(trial, recipe)
    same = duplicate_of(study, trial)
    if same is not None:
        reason = f"same parameters as trial {same}, not trained again"
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr(ENDED_EARLY, reason)
        return TrialState.PRUNED, None

    def on_epoch(state: TrainState, metrics: dict[str, float]) -> None:
        raise_if_interrupted()  # a stop signal a library's GC callback swallowed
        model[:] = [weakref.ref(state.model)]
        epoch = state.epoch + 1
        score = metrics[settings.metric]
        if not math.isfinite(score):  # never reported: a pruner would take inf as the best
            raise NonFiniteScore(f"{settings.metric} is {score} in epoch {epoch}")
        trial.report(score, epoch)
        reporter.epoch(trial, epoch, state.epochs, metrics)
        if state.stop_training and epoch < state.epochs:  # a technique ended it: say why
            why = state.stop_reason or "a technique ended training"
            trial.set_user_attr(ENDED_EARLY, f"{why} (after epoch {epoch} of {state.epochs})")
        last = epoch == state.epochs or state.stop_training
        if not last and trial.should_prune():  # a finished run completes
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr(ENDED_EARLY, f"pruned after epoch {epoch} of {state.epochs}: "
                                             f"behind the other trials there ({settings.pruner})")
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    started = time.perf_counter()
    failure = pm = None
    try:
        pm = training_manager(recipe, catalog)
        history = train(recipe, data, pm, device=device, on_epoch=on_epoch,
                        compile=settings.compile).history
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except StorageFailed:
        raise
    except (TrainingDiverged, NonFiniteScore) as exc:  # pruned: the values, not the code
        failure, ended = str(exc), TrialState.PRUNED
    except Exception as exc:  # the trial fails, the search goes on
        failure, ended = failure_reason(exc, pm), TrialState.FAIL
        trace = traceback_text(exc)  # text only: the traceback itself is not kept
    if failure is not None:  # handled here, not inside `except`: no traceback keeps the
        trial.set_user_attr("fail_reason", failure)  # trial's tensors alive
        if ended == TrialState.PRUNED:
            trial.set_user_attr(ENDED_EARLY, failure)
        else:
            log = write_trial_log(settings.run_dir, trial.number, failure, trace)
            trial.set_user_attr(TRACEBACK_LOG, str(log.resolve()))
        return ended, None
    final = history[-1]
    trial.set_user_attr("metrics", final)
    trial.set_user_attr("epochs_run", len(history))
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
    trial.set_user_attr("threads", torch.get_num_threads())  # CPU results depend on it
    return TrialState.COMPLETE, final[settings.metric]


def export_best(study: optuna.Study, run_dir: Path) -> None:
    """Write the study's best recipe to ``run_dir/best_recipe.yaml`` (atomically): after every
    new best, and once more at the end, when workers may have finished out of order."""
    try:
        best = chosen_trial(study)
    except ValueError:  # no completed trial yet
        return
    write_atomic(run_dir / BEST_RECIPE, with_provenance(trial_recipe(best), study, best).to_yaml())


def _check_same_study(study: optuna.Study, space: SearchSpace,
                      settings: SearchSettings) -> None:
    """Refuse to resume a study under another metric, direction or space (results would mix,
    and the sampler would learn from trials of another problem); name what differs."""
    stored_metric = study.user_attrs.get("metric", settings.metric)
    stored_direction = study.direction.name.lower()
    hint = "use another --study-name or --out"
    if (stored_metric, stored_direction) != (settings.metric, settings.direction):
        raise UserError(
            f"study '{settings.study_name}' optimises {stored_metric} ({stored_direction}), "
            f"not {settings.metric} ({settings.direction}); {hint}")
    stored = study.user_attrs.get("space_definition")
    if stored is None:
        return
    current = space.definition()
    for key in sorted(stored.keys() | current.keys()):
        if stored.get(key) != current.get(key):
            raise UserError(
                f"study '{settings.study_name}' was run with another space: {key} was "
                f"{_shown(stored.get(key))}, now {_shown(current.get(key))}; {hint}")


def _shown(value: str | None) -> str:
    return "absent" if value is None else value


def trial_recipe(trial: FrozenTrial) -> Recipe:
    """The full recipe a trial trained with (stored when it started)."""
    if "recipe" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored recipe")
    return Recipe.from_dict(trial.user_attrs["recipe"])
