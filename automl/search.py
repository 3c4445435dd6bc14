"""Run a search: the public entry of the Optuna driver.

:func:`run_search` creates or joins the study (:mod:`automl.study_lifecycle`), runs its
trials in this process (:mod:`automl.trial_loop`) or in worker processes
(:mod:`automl.workers`), confirms the best trials and exports the best recipe. What the
trials train with (technique catalog, plugin-manager factory, extra plugins) comes in as
:class:`Plugins`, which ``--jobs`` workers receive too.
"""

from __future__ import annotations

from dataclasses import replace

import optuna
from optuna.trial import TrialState

from automl.confirm import confirm
from automl.data import DataBundle, check_data, load_data
from automl.errors import UserError
from automl.failures import check_repeated_failure
from automl.search_context import Plugins, Reporter, SearchContext
from automl.search_settings import SearchSettings
from automl.space import SearchSpace
from automl.study_lifecycle import (
    BEST_RECIPE,
    FINISHED,
    all_finished,
    create_study,
    export_best,
    recording,
    trial_recipe,
)
from automl.trainer import resolve_device
from automl.trial_loop import run_trials, trainer_for
from automl.workers import run_workers, worker_groups

__all__ = ["SearchSettings", "Reporter", "Plugins", "run_search", "create_study",
           "export_best", "trial_recipe", "BEST_RECIPE", "FINISHED"]


def run_search(space: SearchSpace, settings: SearchSettings, reporter: Reporter,
               data: DataBundle | None = None, plugins: Plugins | None = None) -> optuna.Study:
    """Run (or resume, or join) the study until its ``n_trials`` tickets are used up or time
    runs out (see :mod:`automl.trial_queue`).

    With ``settings.jobs`` > 1 or ``settings.gpus`` the trials run in worker processes on the
    same storage (see :mod:`automl.workers`); otherwise in this process. ``plugins``: what
    every training uses besides the recipe's techniques (every worker gets the same).
    """
    from automl.tracking import tracked

    groups = worker_groups(settings.jobs, settings.gpus, settings.device,
                           settings.gpus_per_trial)
    devices = [group[0] for group in groups]  # each worker's rank 0: its trial loop
    settings = replace(settings, rank_devices=groups[0])  # this process's trials' ranks
    reporter = tracked(reporter, settings)  # a tracker's missing package: before any write
    for device in {d for group in groups for d in group}:  # an unusable device stops the
        resolve_device(device)  # search before it starts
    plugins = plugins or Plugins()
    context = SearchContext.build(settings, reporter, devices[0], plugins)
    if data is None and len(devices) > 1:  # each worker loads it: keep no copy here
        check_data(space.data)  # user errors (settings, missing files) before any write
    elif data is None:
        data = load_data(space.data)  # user errors before any write
    study = create_study(space, settings)
    todo = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    reporter.search_start(study, settings, todo)
    if todo and len(devices) > 1:
        try:
            run_workers(space, settings, plugins, groups, todo)
        except UserError:  # the workers stopped: on one repeated failure, name it
            check_repeated_failure(study.get_trials(deepcopy=False))
            raise
    elif todo:
        run_trials(study, space, context, data)
    if settings.confirmations() and settings.multi_objective:
        reporter.note(f"confirmation skipped: it re-runs trials to compare one score, and "
                      f"this study has {len(settings.metrics)} metrics (the Pareto front "
                      "below is from single runs)")
    elif settings.confirmations() and all_finished(study):
        with recording(settings, "confirming the best trials"):
            confirm(study, settings.confirmations(), settings.confirm_seeds,
                    settings.confirm_splits, trainer_for(context), reporter.note)
    export_best(study, settings.run_dir)
    return study
