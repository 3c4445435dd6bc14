"""The Optuna driver: study, sampler/pruner factories, the objective, and the best-recipe export.

Each trial samples a Recipe from the space, trains it with a fresh plugin manager, reports the
validation metric after every epoch (so the pruner can stop it), and stores its full recipe
and final metrics as user attributes. ``best_recipe.yaml`` is rewritten whenever the best
improves, so an interrupted search loses nothing.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.data import DataBundle, load_data
from automl.discovery import technique_catalog, training_manager
from automl.errors import UserError
from automl.failures import TrialFailed, failure_reason
from automl.recipe import Recipe
from automl.space import SearchSpace
from automl.state import TrainState
from automl.storage import open_storage
from automl.trainer import TrainingDiverged, release_memory, resolve_device, train
from automl.yamlio import write_atomic

__all__ = ["SearchSettings", "Reporter", "run_search", "create_study", "run_trials",
           "export_best", "make_sampler", "make_pruner", "open_study", "trial_recipe", "FINISHED"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _not_a_reported_failure(record: logging.LogRecord) -> bool:
    """Optuna's own two warnings (one with a traceback) for a trial that raised: the search
    reports the failure itself, in one line with its reason."""
    if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
        return False
    return not record.getMessage().endswith(" failed with value None.")


logging.getLogger("optuna.study._optimize").addFilter(_not_a_reported_failure)
BEST_RECIPE = "best_recipe.yaml"


class Reporter(Protocol):
    """What the driver tells the user about; see :mod:`automl.report` for the console one."""

    def search_start(self, study: optuna.Study, settings: SearchSettings, todo: int) -> None: ...
    def trial_start(self, trial: optuna.Trial, recipe: Recipe) -> None: ...
    def epoch(self, trial: optuna.Trial, epoch: int, epochs: int,
              metrics: dict[str, float]) -> None: ...
    def trial_end(self, study: optuna.Study, trial: FrozenTrial, new_best: bool) -> None: ...


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
    device: str | None = None
    jobs: int = 1  # trials running at once (per GPU with ``gpus``), each in its own process
    gpus: str | None = None  # "all" or "0,2": one set of ``jobs`` workers per listed GPU
    compile: bool = False  # train through torch.compile

    @classmethod
    def from_space(cls, space: SearchSpace, *, study_name: str, run_dir: Path,
                   storage: str | None = None, device: str | None = None, jobs: int = 1,
                   gpus: str | None = None, compile: bool = False,
                   **overrides) -> SearchSettings:
        study = {**space.study, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(study_name=study_name, run_dir=run_dir, storage=storage,
                   n_trials=study["n_trials"], timeout=study["timeout"], seed=study["seed"],
                   sampler=study["sampler"], pruner=study["pruner"], metric=study["metric"],
                   direction=study["direction"], device=device, jobs=jobs, gpus=gpus,
                   compile=compile)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (seeded, multivariate over conditional groups) by default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True,
                                              group=True, constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"unknown sampler '{name}'; valid: tpe, random, cmaes, gp")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs by default; ``none`` trains every trial to the end.

    ``epochs`` is the longest training a trial of the space can run (techniques such as
    long training multiply the space's epochs), so Hyperband's brackets span every trial.
    """
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner '{name}'; valid: hyperband, median, sha, none")


def run_search(space: SearchSpace, settings: SearchSettings, reporter: Reporter,
               data: DataBundle | None = None) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials or time runs out.

    With ``settings.jobs`` > 1 or ``settings.gpus`` the trials run in worker processes on the
    same storage (see :mod:`automl.workers`); otherwise in this process.
    """
    from automl.workers import run_workers, worker_devices

    devices = worker_devices(settings.jobs, settings.gpus, settings.device)
    data = data if data is not None else load_data(space.data)  # user errors before any write
    study = create_study(space, settings)
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    todo = max(settings.n_trials - done, 0)
    reporter.search_start(study, settings, todo)
    if todo and len(devices) > 1:
        run_workers(space, settings, devices, todo)
    elif todo:
        run_trials(study, space, settings, reporter, data, todo, devices[0])
    export_best(study, settings.run_dir)
    return study


def create_study(space: SearchSpace, settings: SearchSettings) -> optuna.Study:
    """Open the study (creating it with the baseline trial queued), refusing another objective."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=settings.study_name, storage=open_storage(settings.storage, settings.run_dir),
        sampler=make_sampler(settings.sampler, settings.seed),
        pruner=make_pruner(settings.pruner, space.max_epochs()), direction=settings.direction,
        load_if_exists=True)
    _check_same_study(study, space, settings)
    if not study.trials:
        study.set_user_attr("metric", settings.metric)
        study.set_user_attr("space", space.source)
        study.set_user_attr("space_definition", space.definition())
        study.enqueue_trial(space.baseline_params(), user_attrs={"baseline": True},
                            skip_if_exists=True)
    return study


def run_trials(study: optuna.Study, space: SearchSpace, settings: SearchSettings,
               reporter: Reporter, data: DataBundle, n_trials: int,
               device_name: str | None) -> None:
    """Sample, train and record ``n_trials`` trials in this process, one after another."""
    catalog = technique_catalog()
    device = resolve_device(device_name)

    trial_model: list[weakref.ref] = []  # the running trial's model, to check it was freed

    def objective(trial: optuna.Trial) -> float:
        trial_model.clear()
        recipe = space.sample(trial)
        trial.set_user_attr("recipe", recipe.to_dict())
        reporter.trial_start(trial, recipe)
        pm = None

        def on_epoch(state: TrainState, metrics: dict[str, float]) -> None:
            trial_model[:] = [weakref.ref(state.model)]
            epoch = state.epoch + 1
            trial.report(metrics[settings.metric], epoch)
            reporter.epoch(trial, epoch, state.epochs, metrics)
            last = epoch == state.epochs or state.stop_training
            if not last and trial.should_prune():  # a finished run completes
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        started = time.perf_counter()
        failure = None
        try:
            pm = training_manager(recipe, catalog)
            history = train(recipe, data, pm, device=device, on_epoch=on_epoch,
                            compile=settings.compile).history
        except optuna.TrialPruned:
            raise
        except TrainingDiverged as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:  # the trial fails, the search goes on
            failure = failure_reason(exc, pm)
        if failure is not None:  # raised here, not inside `except`: no traceback keeps the
            trial.set_user_attr("fail_reason", failure)  # trial's tensors alive
            raise TrialFailed(failure)
        final = history[-1]
        trial.set_user_attr("metrics", final)
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        if not math.isfinite(final[settings.metric]):  # never a best trial
            reason = f"{settings.metric} is {final[settings.metric]}"
            trial.set_user_attr("fail_reason", reason)
            raise optuna.TrialPruned(reason)
        return final[settings.metric]

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        release_memory(device, trial_model[0] if trial_model else None)
        new_best = trial.state == TrialState.COMPLETE and study.best_trial.number == trial.number
        if new_best:
            export_best(study, settings.run_dir)
        reporter.trial_end(study, trial, new_best)

    study.optimize(objective, n_trials=n_trials, timeout=settings.timeout,
                   callbacks=[after_trial], catch=(TrialFailed,))


def export_best(study: optuna.Study, run_dir: Path) -> None:
    """Write the study's best recipe to ``run_dir/best_recipe.yaml`` (atomically): after every
    new best, and once more at the end, when workers may have finished out of order."""
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return
    write_atomic(run_dir / BEST_RECIPE, trial_recipe(best).to_yaml())


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


def open_study(study_name: str, run_dir: Path, storage: str | None) -> optuna.Study:
    """Load an existing study; an unknown name lists the ones the storage holds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = None if storage and "://" in storage else Path(storage or run_dir / "study.journal")
    if journal is not None and not journal.exists():
        raise UserError(f"no study found: {journal} does not exist (run `automl search` first, "
                        "or pass --out DIR / --storage URL|PATH)")
    backend = open_storage(storage, run_dir)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise UserError(f"no study named '{study_name}'; this storage has: "
                        f"{', '.join(names) or 'none'}") from None


def trial_recipe(trial: FrozenTrial) -> Recipe:
    """The full recipe a trial trained with (stored when it started)."""
    if "recipe" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored recipe")
    return Recipe.from_dict(trial.user_attrs["recipe"])
