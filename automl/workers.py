"""Several trials at once: worker processes sharing one study through its storage.

``--jobs N`` runs N workers on the search device (small models leave a GPU mostly idle, so a
few trials side by side use it better); ``--gpus all`` (or ``0,2``) runs ``jobs`` workers on
every listed GPU; with ``--gpus-per-trial K`` the listed GPUs form groups of K, and each
worker's trials train on the K GPUs of its group (:mod:`automl.trial_ranks`). Workers are
processes, not threads: each has its own CUDA context, RNG and
interpreter, so a trial never waits on another's Python. Each worker claims
the study's waiting trials until none is left (see :mod:`automl.trial_queue`). Each worker
joins the study the parent created, so its sampler's seed mixes in its own process
(:func:`automl.study_lifecycle.sampler_seed`): a parallel search is not reproducible trial for
trial; a sequential one is. A worker rebuilds its :class:`automl.search_context.SearchContext`
from the picklable settings and :class:`~automl.search_context.Plugins` it is given.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from automl.errors import UserError
from automl.interrupts import Interrupted, stop_on_signals
from automl.search_context import Plugins, SearchContext
from automl.search_settings import SearchSettings
from automl.trial_ranks import rank_devices

if TYPE_CHECKING:
    from automl.space import SearchSpace

__all__ = ["worker_devices", "worker_groups", "run_workers"]


def worker_devices(jobs: int, gpus: str | None, device: str | None) -> list[str | None]:
    """The device of every worker: ``jobs`` per listed GPU, or ``jobs`` on ``device``."""
    return [group[0] for group in worker_groups(jobs, gpus, device)]


def worker_groups(jobs: int, gpus: str | None, device: str | None,
                  per_trial: int = 1) -> list[tuple[str | None, ...]]:
    """The devices of every worker's ranks (``per_trial`` per trial, see
    :mod:`automl.trial_ranks`): ``jobs`` workers per group of ``per_trial`` listed GPUs, or
    ``jobs`` on ``device`` (and the GPUs after it)."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if per_trial < 1:
        raise UserError(f"--gpus-per-trial must be at least 1, got {per_trial}")
    if gpus is None:
        return [rank_devices(device, per_trial)] * jobs
    if device:
        raise UserError("--gpus and --device both given; --gpus already picks the devices")
    count = torch.cuda.device_count()
    if count == 0:
        raise UserError("--gpus: no CUDA device is visible on this machine")
    if gpus == "all":
        ids = list(range(count))
    else:
        try:
            ids = [int(part) for part in gpus.split(",")]
        except ValueError:
            raise UserError(f"--gpus: expected 'all' or GPU numbers like 0,1; got {gpus!r}"
                            ) from None
        wrong = [i for i in ids if not 0 <= i < count]
        if wrong or len(set(ids)) != len(ids):
            raise UserError(f"--gpus {gpus}: this machine has GPUs 0..{count - 1}, each listed "
                            "at most once")
    if len(ids) % per_trial:
        raise UserError(f"--gpus {gpus}: {len(ids)} GPU(s) do not divide into groups of "
                        f"--gpus-per-trial {per_trial}")
    groups = [tuple(f"cuda:{i}" for i in ids[k:k + per_trial])
              for k in range(0, len(ids), per_trial)]
    return [group for group in groups for _ in range(jobs)]


def run_workers(space: SearchSpace, settings: SearchSettings, plugins: Plugins,
                groups: list[tuple[str | None, ...]], todo: int) -> None:
    """Run the study's ``todo`` waiting trials in one process per entry of ``groups`` (the
    devices of a worker's ranks, see :func:`worker_groups`; at most ``todo`` processes);
    each claims trials until none is left.

    The workers live in their own process group, so a Ctrl-C reaches this process only; it
    passes the signal on once, and each worker fails its running trial cleanly.
    """
    groups = groups[:todo]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // len(groups))  # a worker's trial splits them among its ranks
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    processes = [
        context.Process(target=_worker, name=f"automl-worker-{k}",
                        args=(space, replace(settings, jobs=1, gpus=None, device=group[0],
                                             rank_devices=group,
                                             seed=(settings.seed + k) % 2**32), plugins,
                              threads))
        for k, group in enumerate(groups)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except Interrupted as exc:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, exc.signum)
        for process in processes:
            process.join()
        raise
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise UserError(f"search worker(s) {', '.join(failed)} stopped with an error (see "
                        "above); finished trials are kept, run the command again to resume")


def _worker(space: SearchSpace, settings: SearchSettings, plugins: Plugins,
            threads: int) -> None:
    """One worker process: its own data, study handle, context and console lines."""
    from automl.data import load_data
    from automl.failures import RepeatedFailure
    from automl.report import ConsoleReporter, show_warnings
    from automl.study_lifecycle import create_study
    from automl.tracking import tracked
    from automl.trial_loop import run_trials

    os.setpgid(0, 0)  # the terminal's Ctrl-C goes to the parent, which passes it on once
    show_warnings()
    torch.set_num_threads(threads)  # the workers share the machine's cores
    with stop_on_signals():
        try:
            study = create_study(space, settings, say_versions=False)  # the parent said it
            reporter = tracked(ConsoleReporter(settings.metric, live=False), settings)
            context = SearchContext.build(settings, reporter, settings.device, plugins)
            run_trials(study, space, context, load_data(space.data))
        except Interrupted as exc:
            sys.exit(exc.exit_code)
        except RepeatedFailure as exc:  # the parent names the reason, once
            sys.exit(exc.exit_code)
        except UserError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
