"""`automl search --gpus-per-trial K`: each trial trains on K data-parallel ranks.

Real processes on the CPU (gloo, two ranks), the embedded digits dataset and automl_resnet8:
a small study runs to the end on two ranks, a rank killed mid-trial fails its trial (named)
and the retry completes, and no rank process outlives its trial. The device choices are
checked without a GPU (torch.cuda's counts patched).
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.distributed import TIMEOUT_ENV
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.search import BEST_RECIPE, Plugins, SearchSettings, run_search
from automl.search_context import SearchContext
from automl.space import load_space
from automl.trial_loop import trainer_for
from automl.trial_queue import RETRY_OF
from automl.trial_ranks import rank_devices
from automl.workers import worker_groups

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: %(epochs)d
techniques:
  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.08}}
study: {sampler: random, pruner: none, n_trials: %(n_trials)d, seed: 0}
"""


class RankProbe:
    """Records which rank of how many each training ran as (a file per rank and process);
    with ``kill_marker``, rank 1 of the first training to get there kills itself with
    SIGKILL after epoch 1 (the marker file says it happened, so the retry trains on)."""

    def __init__(self, directory: Path, kill_marker: Path | None = None):
        self.directory, self.kill_marker = directory, kill_marker

    @hookimpl
    def on_train_start(self, state):
        name = f"rank{state.rank}-of-{state.world_size}-pid{os.getpid()}-{uuid.uuid4().hex}"
        (self.directory / name).touch()

    @hookimpl
    def on_epoch_end(self, state):
        if self.kill_marker is not None and state.rank == 1 and not self.kill_marker.exists():
            self.kill_marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def _search(tmp_path: Path, probe: RankProbe, epochs: int, n_trials: int,
            gpus_per_trial: int = 2):
    path = tmp_path / "ranks.yaml"
    path.write_text(SPACE % {"epochs": epochs, "n_trials": n_trials})
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name="ranks", run_dir=tmp_path / "run",
                                         device="cpu", gpus_per_trial=gpus_per_trial)
    return run_search(space, settings, SilentReporter(), plugins=Plugins(extra=(probe,)))


def _rank_processes_alive() -> list[str]:
    """This process's children that multiprocessing spawned (a rank; not its resource
    tracker), as their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == os.getpid() and "spawn_main" in cmdline and fields[0] != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def probe_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "20")  # a rank stuck in a collective fails the test fast
    directory = tmp_path / "probe"
    directory.mkdir()
    return directory


def test_a_study_of_two_rank_trials_runs_to_the_end(tmp_path, probe_dir):
    study = _search(tmp_path, RankProbe(probe_dir), epochs=1, n_trials=2)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert (tmp_path / "run" / BEST_RECIPE).exists()
    runs = sorted(re.match(r"(rank\d-of-\d)-pid(\d+)-", p.name).groups()
                  for p in probe_dir.iterdir())
    # every training (2 trials) ran as rank 0 here and rank 1 in a process of its own
    assert [r for r, _ in runs] == ["rank0-of-2"] * 2 + ["rank1-of-2"] * 2
    assert {int(pid) for r, pid in runs if r == "rank0-of-2"} == {os.getpid()}
    assert len({int(pid) for r, pid in runs if r == "rank1-of-2"} - {os.getpid()}) == 2
    assert _rank_processes_alive() == []
    assert torch.distributed.is_initialized() is False  # rank 0 left the group
    # the number of ranks never changes what is trained: a resume may change it
    study = _search(tmp_path, RankProbe(probe_dir), epochs=1, n_trials=3, gpus_per_trial=1)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 3


def test_a_killed_rank_fails_its_trial_and_the_retry_completes(tmp_path, probe_dir):
    marker = tmp_path / "killed"
    study = _search(tmp_path, RankProbe(probe_dir, kill_marker=marker), epochs=2, n_trials=1)
    assert marker.exists()
    first, retry = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    reason = first.user_attrs["fail_reason"]
    assert re.fullmatch(r"rank 1 \(pid \d+\) died: killed by signal 9 \(SIGKILL\)", reason), \
        reason
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[RETRY_OF] == first.number
    assert retry.params == first.params
    assert (tmp_path / "run" / BEST_RECIPE).exists()
    assert _rank_processes_alive() == []
    assert torch.distributed.is_initialized() is False


def test_confirmation_runs_train_on_the_same_ranks(tmp_path, probe_dir):
    path = tmp_path / "ranks.yaml"
    path.write_text(SPACE % {"epochs": 1, "n_trials": 1})
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name="ranks", run_dir=tmp_path / "run",
                                         device="cpu", gpus_per_trial=2)
    context = SearchContext.build(settings, SilentReporter(), "cpu",
                                  Plugins(extra=(RankProbe(probe_dir),)))
    recipe = space.sample(optuna.trial.FixedTrial(space.baseline_params()))
    score, epochs = trainer_for(context)(recipe)
    assert epochs == 1 and 0 <= score <= 1
    ranks = sorted(p.name.split("-pid")[0] for p in probe_dir.iterdir())
    assert ranks == ["rank0-of-2", "rank1-of-2"]
    assert _rank_processes_alive() == []


class RaiseOnOneRank:
    """The first training raises on rank 1 after epoch 1, the second on rank 0 (decided at
    the start of each training: rank 1's marker file says the first one happened)."""

    def __init__(self, rank_one_raised: Path):
        self.marker = rank_one_raised

    @hookimpl
    def on_train_start(self, state):
        first = not self.marker.exists()
        state.extras["raise_here"] = state.rank == (1 if first else 0)

    @hookimpl
    def on_epoch_end(self, state):
        if state.extras["raise_here"]:
            if state.rank == 1:
                self.marker.touch()
            raise ValueError(f"boom on rank {state.rank}")


def test_an_error_on_either_rank_fails_its_trial_without_a_retry(tmp_path, probe_dir):
    path = tmp_path / "ranks.yaml"
    path.write_text(SPACE % {"epochs": 2, "n_trials": 2})
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name="ranks", run_dir=tmp_path / "run",
                                         device="cpu", gpus_per_trial=2)
    study = run_search(space, settings, SilentReporter(),
                       plugins=Plugins(extra=(RaiseOnOneRank(tmp_path / "raised"),)))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # an error is not retried
    on_one, on_zero = (t.user_attrs["fail_reason"] for t in trials)
    # rank 1's own reason, with the hook that raised, reached rank 0 through the store
    assert re.fullmatch(r"rank 1 \(pid \d+\) failed: plugin .+, hook on_epoch_end: "
                        r"ValueError: boom on rank 1", on_one), on_one
    assert re.fullmatch(r"plugin .+, hook on_epoch_end: ValueError: boom on rank 0",
                        on_zero), on_zero  # as on one rank; rank 1 ended with it
    assert _rank_processes_alive() == []


def test_gpus_per_trial_must_be_positive(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--gpus-per-trial", "0", "--device", "cpu",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--gpus-per-trial" in result.output, result.output
    with pytest.raises(UserError, match="--gpus-per-trial must be at least 1, got 0"):
        worker_groups(1, None, "cpu", per_trial=0)


def test_cpu_ranks_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_devices("cpu", 3) == ("cpu",) * 3
    assert rank_devices(None, 2) == ("cpu", "cpu")  # the default device: the CPU here
    assert worker_groups(2, None, None, per_trial=2) == [("cpu", "cpu")] * 2
    with pytest.raises(UserError, match="no usable CUDA GPU"):
        rank_devices("cuda", 2)


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU on the CI machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize(("jobs", "gpus", "device", "per_trial", "expected"), [
    (1, "all", None, 2, [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3")]),
    (2, "3,1", None, 2, [("cuda:3", "cuda:1")] * 2),
    (1, "all", None, 4, [("cuda:0", "cuda:1", "cuda:2", "cuda:3")]),
    (1, None, None, 2, [("cuda:0", "cuda:1")]),  # the default device: GPUs 0..K-1
    (1, None, "cuda:2", 2, [("cuda:2", "cuda:3")]),
    (2, None, "cpu", 2, [("cpu", "cpu")] * 2),
    (1, "all", None, 1, [("cuda:0",), ("cuda:1",), ("cuda:2",), ("cuda:3",)]),
])
def test_gpu_groups_of_k(four_gpus, jobs, gpus, device, per_trial, expected):
    assert worker_groups(jobs, gpus, device, per_trial) == expected


@pytest.mark.parametrize(("gpus", "device", "per_trial", "message"), [
    ("all", None, 3, r"--gpus all: 4 GPU\(s\) do not divide into groups of --gpus-per-trial 3"),
    ("0,1,2", None, 2, r"3 GPU\(s\) do not divide into groups of --gpus-per-trial 2"),
    (None, None, 5, r"--gpus-per-trial 5: this machine has 4 CUDA GPU\(s\)"),
    (None, "cuda:3", 2, r"--gpus-per-trial 2: this machine has 4 CUDA GPU\(s\), 1 from cuda:3"),
])
def test_more_gpus_per_trial_than_there_are_is_refused(four_gpus, gpus, device, per_trial,
                                                       message):
    with pytest.raises(UserError, match=message):
        worker_groups(1, gpus, device, per_trial)


def test_the_search_says_how_many_ranks_train_each_trial(tmp_path, probe_dir):
    space = tmp_path / "ranks.yaml"
    space.write_text(SPACE % {"epochs": 1, "n_trials": 1})
    result = CliRunner().invoke(cli, ["search", str(space), "--gpus-per-trial", "2",
                                      "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    first = next(line for line in result.output.splitlines() if line.startswith("study "))
    assert first.endswith("2 data-parallel ranks per trial"), first
    assert "trial   0  done" in result.output


def _descendants_alive(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # not a process, or ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(entry.name))
    return found


def test_ctrl_c_fails_the_trial_and_ends_every_rank(tmp_path):
    """SIGINT to the search mid-trial: exit 130, the trial FAILED as interrupted (and queued
    again), and rank 1's process is gone; it never saw the signal itself (its own group)."""
    import subprocess
    import sys
    import time

    space = tmp_path / "ranks.yaml"
    space.write_text(SPACE % {"epochs": 200, "n_trials": 1})
    search = subprocess.Popen(
        [sys.executable, "-m", "automl", "search", str(space), "--gpus-per-trial", "2",
         "--device", "cpu", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", TIMEOUT_ENV: "20"})
    deadline = time.monotonic() + 120
    ranks: set[int] = set()
    while not ranks and time.monotonic() < deadline and search.poll() is None:
        ranks = {pid for pid in _descendants_alive(search.pid)
                 if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
        time.sleep(0.2)
    assert ranks, "rank 1 never started"
    time.sleep(3)  # into the training
    search.send_signal(signal.SIGINT)
    search.communicate(timeout=60)
    assert search.returncode == 130
    time.sleep(1)
    assert not any(Path(f"/proc/{pid}/stat").exists() and
                   Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                   for pid in ranks)
    from automl.storage import open_storage

    study = optuna.load_study(study_name="ranks", storage=open_storage(None, tmp_path / "run"))
    first = study.get_trials(deepcopy=False)[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("interrupted")
