"""Using the whole machine: worker processes on one study, and trials that leave nothing behind."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
import weakref
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from automl.discovery import technique_catalog, training_manager
from automl.errors import UserError
from automl.heartbeat import WORKER
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.search import BEST_RECIPE, Plugins, SearchSettings, run_search
from automl.space import load_recipe, load_space
from automl.technique import Technique
from automl.workers import worker_devices

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 64}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
  flip: {}
  label_smoothing: {}
study: {sampler: tpe, pruner: none, n_trials: 4}
"""


class RecordingReporter(SilentReporter):
    def __init__(self):
        self.ended = []

    def trial_end(self, study, trial, new_best):
        self.ended.append(trial)


def _space(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPACE)
    return load_space(path, technique_catalog())


def _settings(space, tmp_path: Path, **extra) -> SearchSettings:
    return SearchSettings.from_space(space, study_name="tiny", run_dir=tmp_path / "run",
                                     device="cpu", **extra)


class UntilTwoProcessesTrain:
    """Holds a process's first trial until another process has started one too (at most a
    minute), so a worker that starts slowly on a busy machine still gets trials to run."""

    def __init__(self, directory: Path):
        self.directory = directory

    @hookimpl
    def on_train_start(self, state):
        (self.directory / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(self.directory.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)


def test_jobs_run_the_trials_in_several_processes_on_one_study(tmp_path):
    space = _space(tmp_path)
    started = tmp_path / "started"
    started.mkdir()
    study = run_search(space, _settings(space, tmp_path, jobs=2), RecordingReporter(),
                       plugins=Plugins(extra=(UntilTwoProcessesTrain(started),)))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4, "two workers drew the same trials"
    # the heartbeat's record of the process that ran each trial: two workers, not this one
    pids = {t.system_attrs[WORKER]["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids, pids
    best = load_recipe(tmp_path / "run" / BEST_RECIPE, technique_catalog())
    assert best.provenance["trial"] == study.best_trial.number
    assert dataclasses.replace(best, provenance=None).to_dict() == \
        study.best_trial.user_attrs["recipe"]


class Stamp(Technique):
    """A technique only this test's catalog has: each training stamps a file.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "stamp"
    space = {}
    defaults = {}

    @hookimpl
    def on_train_start(self, state):
        (Path(state.extras["stamp_dir"]) / f"technique-{os.getpid()}-{uuid.uuid4().hex}").touch()


class StampDir:
    """An extra plugin (not a technique): tells the technique where to stamp, and stamps too."""

    def __init__(self, directory: Path):
        self.directory = directory

    @hookimpl(tryfirst=True)
    def on_train_start(self, state):
        state.extras["stamp_dir"] = str(self.directory)
        (self.directory / f"plugin-{os.getpid()}-{uuid.uuid4().hex}").touch()


def test_the_plugins_given_to_a_search_reach_its_worker_processes(tmp_path):
    """A catalog with a test's own technique and an extra plugin: the same in every worker."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    path = tmp_path / "stamped.yaml"
    path.write_text(SPACE.replace("  flip: {}", "  stamp: {enabled: true}"))
    catalog = {**technique_catalog(), "stamp": Stamp}
    space = load_space(path, catalog)
    study = run_search(space, _settings(space, tmp_path, jobs=2), SilentReporter(),
                       plugins=Plugins(catalog=catalog, extra=(StampDir(stamps),)))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    names = sorted(p.name for p in stamps.iterdir())
    pids = {int(name.split("-")[1]) for name in names}
    assert [name.split("-")[0] for name in names] == ["plugin"] * 4 + ["technique"] * 4
    assert os.getpid() not in pids  # trained in the workers, not here


def test_each_trial_releases_its_model_before_the_next_starts(tmp_path):
    """Completed and pruned (diverged) trials alike: no model outlives its trial."""
    models: list[weakref.ref] = []

    class Recorder:
        def __init__(self, diverge: bool):
            self.diverge = diverge

        @hookimpl
        def on_train_start(self, state):
            models.append(weakref.ref(state.model))

        @hookimpl
        def after_loss(self, state):
            if self.diverge:
                state.loss = state.loss * float("nan")

    def manager(recipe, catalog=None, extra_plugins=()):
        return training_manager(recipe, catalog,
                                extra_plugins=[*extra_plugins, Recorder(len(models) % 2 == 1)])

    alive_at_trial_end = []

    class Checking(RecordingReporter):
        def trial_end(self, study, trial, new_best):
            super().trial_end(study, trial, new_best)
            alive_at_trial_end.append(sum(ref() is not None for ref in models))

    space = _space(tmp_path)
    reporter = Checking()
    run_search(space, _settings(space, tmp_path), reporter,
               plugins=Plugins(manager_factory=manager))
    states = [t.state for t in reporter.ended]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED] * 2
    assert reporter.ended[1].user_attrs["fail_reason"] == "training loss is nan in epoch 1"
    assert len(models) == 4
    assert alive_at_trial_end == [0, 0, 0, 0]


def test_worker_devices_on_the_search_device():
    assert worker_devices(3, None, "cpu") == ["cpu"] * 3
    assert worker_devices(1, None, None) == [None]


def test_gpus_need_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # the real one, on any machine
    with pytest.raises(UserError, match="no CUDA device"):
        worker_devices(1, "all", None)


@pytest.mark.parametrize(("gpus", "jobs", "expected"), [
    ("all", 1, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
    ("0,2", 2, ["cuda:0", "cuda:0", "cuda:2", "cuda:2"]),
    ("3", 1, ["cuda:3"]),
])
def test_gpus_place_jobs_workers_on_each_listed_gpu(monkeypatch, gpus, jobs, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # no GPU on the CI machine
    assert worker_devices(jobs, gpus, None) == expected


@pytest.mark.parametrize(("gpus", "device", "message"), [
    ("4", None, "GPUs 0..3"),
    ("0,0", None, "at most once"),
    ("first", None, "expected 'all'"),
    ("all", "cuda:1", "--device both given"),
])
def test_bad_gpu_lists_are_refused(monkeypatch, gpus, device, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(UserError, match=message):
        worker_devices(1, gpus, device)
