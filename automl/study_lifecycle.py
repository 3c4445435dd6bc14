"""A study's lifecycle: create or join it, check that it is the same problem, plan its
tickets, give it a sampler, and export its best recipe.

Everything here runs once per process (or once per new best), never per training step.
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.confirm import chosen_trial
from automl.errors import UserError
from automl.fidelity import FIRST_RUNG, RUNG_TRUST
from automl.provenance import ENVIRONMENT, environment, environment_differences, with_provenance
from automl.recipe import Recipe
from automl.search_algorithms import make_pruner, make_sampler
from automl.search_settings import SearchSettings
from automl.space import SearchSpace, definition_difference
from automl.storage import STORAGE_ERRORS, is_rdb_url, open_storage, storage_failure
from automl.trial_queue import plan_trials, wait_for_plan
from automl.warm_start import warm_start_params
from automl.yamlio import write_atomic

__all__ = ["create_study", "sampler_seed", "recording", "all_finished", "export_best",
           "trial_recipe", "BEST_RECIPE", "FINISHED"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
BEST_RECIPE = "best_recipe.yaml"
logger = logging.getLogger("automl")


def create_study(space: SearchSpace, settings: SearchSettings,
                 say_versions: bool = True) -> optuna.Study:
    """Create the study, or join it, refusing another objective or space and saying (unless
    not ``say_versions``: a --jobs worker, whose parent said it) where this process's
    versions differ from those it was created with; then make it hold ``n_trials`` tickets
    (the first one the baseline)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.sampler == "cmaes" and is_rdb_url(settings.storage) and \
            not settings.storage.startswith("sqlite"):
        raise UserError("sampler cmaes keeps pickled state in the storage, which every worker "
                        "unpickles: anyone who can write to a shared database could run code "
                        "on every worker; use tpe or gp, or a journal/SQLite file")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage, settings.run_dir)
    epochs = space.max_epochs()
    pruner = make_pruner("none" if settings.multi_objective else settings.pruner, epochs,
                         settings.first_rung(epochs), settings.reduction_factor,
                         settings.startup_trials, settings.rung_trust)
    with recording(settings, "opening the study"):
        try:
            study = optuna.create_study(study_name=settings.study_name, storage=storage,
                                        pruner=pruner, directions=list(settings.directions))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=settings.study_name, storage=storage,
                                      pruner=pruner)
            created = False
        if created:
            study.set_user_attr(FIRST_RUNG, settings.first_rung(epochs))
            study.set_user_attr("metric", settings.metric)
            study.set_user_attr("metrics", list(settings.metrics))
            study.set_user_attr("space", space.source)
            study.set_user_attr("space_definition", space.definition())
            study.set_user_attr(ENVIRONMENT, environment())
        wait_for_plan(study, created)
    check_same_study(study, space, settings)
    if not created and say_versions:
        for line in environment_differences(study.user_attrs.get(ENVIRONMENT),
                                            f"study '{settings.study_name}' was created"):
            logger.warning(line)
    with recording(settings, "recording the pruning threshold"):
        if study.user_attrs.get(RUNG_TRUST) != settings.rung_trust:
            study.set_user_attr(RUNG_TRUST, settings.rung_trust)  # for `automl show`
    with recording(settings, "queueing the trials"):
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


@contextmanager
def recording(settings: SearchSettings, doing: str):
    """Storage calls: an exception from them is a storage failure with its real cause."""
    try:
        yield
    except STORAGE_ERRORS as exc:
        raise storage_failure(exc, settings.storage, doing) from exc


def all_finished(study: optuna.Study) -> bool:
    """Every ticket trained: confirmation compares finished trials only (another process
    still working on the study confirms when it is done)."""
    return not study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))


def export_best(study: optuna.Study, run_dir: Path) -> None:
    """Write the study's best recipe to ``run_dir/best_recipe.yaml`` (atomically): after every
    new best, and once more at the end, when workers may have finished out of order."""
    try:
        best = chosen_trial(study)
    except ValueError:  # no completed trial yet
        return
    write_atomic(run_dir / BEST_RECIPE, with_provenance(trial_recipe(best), study, best).to_yaml())


def check_same_study(study: optuna.Study, space: SearchSpace,
                      settings: SearchSettings) -> None:
    """Refuse to resume a study under another metric, direction or space (results would mix,
    and the sampler would learn from trials of another problem); name what differs."""
    stored_metrics = study.user_attrs.get("metrics") or \
        [study.user_attrs.get("metric", settings.metric)]
    stored_directions = [d.name.lower() for d in study.directions]
    hint = "use another --study-name or --out"
    if (list(stored_metrics), stored_directions) != (list(settings.metrics),
                                                     list(settings.directions)):
        was = _objectives(stored_metrics, stored_directions)
        raise UserError(f"study '{settings.study_name}' optimises {was}, not "
                        f"{_objectives(settings.metrics, settings.directions)}; {hint}")
    stored = study.user_attrs.get("space_definition")
    if stored is None:
        return
    difference = definition_difference(stored, space.definition())
    if difference:
        raise UserError(f"study '{settings.study_name}' was run with another space: "
                        f"{difference}; {hint}")


def _objectives(metrics, directions) -> str:
    """``val/acc1 (maximize)``, or ``[val/acc1 (maximize), model/params (minimize)]``."""
    text = ", ".join(f"{m} ({d})" for m, d in zip(metrics, directions, strict=False))
    return f"[{text}]" if len(metrics) > 1 else text


def trial_recipe(trial: FrozenTrial) -> Recipe:
    """The full recipe a trial trained with (stored when it started)."""
    if "recipe" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored recipe")
    return Recipe.from_dict(trial.user_attrs["recipe"])
