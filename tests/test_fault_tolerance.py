"""Faults a long search meets: killed and stopped workers, broken storages, resumes.

Each test checks that the study goes on and nothing finished is lost. Searches that must be
killed run the installed ``automl`` script in a subprocess; the rest run in-process on the
embedded digits dataset with ``automl_resnet8``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from automl.discovery import technique_catalog
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.search import Plugins, SearchSettings, run_search
from automl.space import load_space
from automl.storage import StorageFailed, open_storage, shown_storage, storage_failure
from automl.technique import Technique
from automl.trial_queue import RETRY_OF

SCRIPT = Path(sys.executable).parent / "automl"
AUTOML = str(SCRIPT) if SCRIPT.exists() else shutil.which("automl")

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: %(epochs)d
techniques:
  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.08}}
study: {sampler: random, pruner: none, n_trials: %(n_trials)d, seed: 0}
"""


def write_space(folder: Path, epochs: int = 1, n_trials: int = 3) -> Path:
    path = folder / "faults.yaml"
    path.write_text(SPACE % {"epochs": epochs, "n_trials": n_trials})
    return path


def start_search(space: Path, run_dir: Path, *options: str) -> subprocess.Popen:
    """`automl search` in its own process, one thread, output captured."""
    assert AUTOML, "the automl console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([AUTOML, "search", str(space), "--out", str(run_dir),
                             "--device", "cpu", *options], cwd=run_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal_study(run_dir: Path, name: str = "faults") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def wait_for_running_trial(process: subprocess.Popen, run_dir: Path, after_complete: int = 0,
                           storage: optuna.storages.BaseStorage | None = None) -> int:
    """Wait until a trial is mid-training (an epoch reported), after ``after_complete`` trials
    completed; its number. ``storage``: the study's, when not the run dir's journal file."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if storage is not None or (run_dir / "study.journal").exists():
            try:
                study = optuna.load_study(study_name="faults", storage=storage) \
                    if storage is not None else journal_study(run_dir)
                trials = study.get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                trials = []
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            running = [t for t in trials
                       if t.state == TrialState.RUNNING and t.intermediate_values]
            if running and done >= after_complete:
                return running[0].number
        time.sleep(0.1)
    raise AssertionError("no trial started training in time")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_killed_worker_trial_fails_on_restart_and_its_parameters_run_once_more(tmp_path, kind):
    space = write_space(tmp_path, epochs=6, n_trials=3)
    run_dir = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    options = ("--storage", url) if kind == "sqlite" else ()
    storage = optuna.storages.RDBStorage(url) if kind == "sqlite" else None

    def study() -> optuna.Study:
        if storage is None:
            return journal_study(run_dir)
        return optuna.load_study(study_name="faults", storage=storage)

    process = start_search(space, run_dir, *options)
    killed = wait_for_running_trial(process, run_dir, storage=storage)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert study().trials[killed].state == TrialState.RUNNING

    other = tmp_path / "other"
    other.mkdir()
    rerun = start_search(write_space(other, epochs=1, n_trials=3), run_dir, *options)
    out, err = rerun.communicate(timeout=300)
    # The rerun's space has another epochs value: it must be refused, nothing touched.
    assert rerun.returncode == 2 and "another space: epochs was 6, now 1" in err

    rerun = start_search(space, run_dir, *options)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "Traceback" not in err
    trials = study().get_trials(deepcopy=False)
    stale = trials[killed]
    assert stale.state == TrialState.FAIL
    assert stale.user_attrs["fail_reason"].startswith("worker died (pid ")
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF) == killed]
    assert len(retries) == 1, "the killed trial's parameters run exactly once more"
    assert retries[0].params == stale.params and retries[0].state == TrialState.COMPLETE
    counted = [t for t in trials if RETRY_OF not in t.user_attrs]
    assert len(counted) == 3 and all(t.state != TrialState.RUNNING for t in trials)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_fails_the_running_trial_and_keeps_the_best_recipe(tmp_path, signum, code):
    space = write_space(tmp_path, epochs=4, n_trials=4)
    run_dir = tmp_path / "run"
    process = start_search(space, run_dir)
    stopped = wait_for_running_trial(process, run_dir, after_complete=1)
    best_before = (run_dir / "best_recipe.yaml").read_text()
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err and "Traceback" not in err
    study = journal_study(run_dir)
    trial = study.trials[stopped]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == f"interrupted ({name})"
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting
            if t.user_attrs.get(RETRY_OF) == stopped] == [trial.params]
    best = yaml.safe_load(best_before)
    assert yaml.safe_load((run_dir / "best_recipe.yaml").read_text()) == best
    assert best.pop("provenance")["trial"] == study.best_trial.number
    assert best == study.best_trial.user_attrs["recipe"]


def test_two_processes_on_one_journal_run_exactly_the_budget(tmp_path):
    space = write_space(tmp_path, epochs=1, n_trials=8)
    journal = tmp_path / "shared.journal"
    processes = [start_search(space, tmp_path / f"machine{k}", "--storage", str(journal))
                 for k in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    study = optuna.load_study(study_name="faults",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.number for t in study.trials] == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    workers = {t.system_attrs["automl:worker"]["pid"] for t in study.trials}
    assert workers == {p.pid for p in processes}, "both processes ran trials"


# --- in-process ------------------------------------------------------------------------------


def settings_for(space, run_dir: Path, **overrides) -> SearchSettings:
    return SearchSettings.from_space(space, study_name="faults", run_dir=run_dir,
                                     device="cpu", **overrides)


def test_resume_draws_new_parameters_instead_of_repeating_the_first_ones(tmp_path):
    space = load_space(write_space(tmp_path, n_trials=3), technique_catalog())
    run_dir = tmp_path / "run"
    run_search(space, settings_for(space, run_dir), SilentReporter())
    study = run_search(space, settings_for(space, run_dir, n_trials=6), SilentReporter())
    lrs = [t.params["optimizer.lr"] for t in study.trials if "optimizer.lr" in t.params]
    assert len(study.trials) == 6 and len(lrs) >= 5
    assert len(set(lrs)) == len(lrs), "a resumed search repeated earlier parameters"
    fresh = run_search(space, settings_for(space, tmp_path / "fresh"), SilentReporter())
    assert [t.params for t in fresh.trials[:3]] == [t.params for t in study.trials[:3]]


class Choice(Technique):
    """Two values only, so a sampler soon draws one twice.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "choice"
    space = {"value": CategoricalDistribution(["a", "b"])}
    defaults = {"value": "a"}


class BreaksStorage(Technique):
    """Turns the journal file into a directory after an epoch: a disk or network failure.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "breaks_storage"
    space = {}
    defaults = {}
    journal: Path

    @hookimpl
    def on_epoch_end(self, state):
        self.journal.rename(self.journal.with_suffix(".moved"))
        self.journal.mkdir()


@pytest.fixture
def catalog():
    catalog = {**technique_catalog(), "choice": Choice, "breaks_storage": BreaksStorage}
    return catalog


def test_parameters_already_tried_are_not_trained_again(tmp_path, catalog):
    path = tmp_path / "choice.yaml"
    path.write_text(SPACE.replace("  optimizer: {name: sgd, lr: {type: float, low: 0.02, "
                                  "high: 0.08}}", "  choice: {enabled: true}")
                    % {"epochs": 1, "n_trials": 5})
    space = load_space(path, catalog)
    study = run_search(space, settings_for(space, tmp_path / "run"), SilentReporter(),
                       plugins=Plugins(catalog=catalog))
    repeats = [t for t in study.trials
               if t.user_attrs.get("fail_reason", "").startswith("same parameters as trial ")]
    assert repeats, "5 draws from 2 choices must repeat one"
    for trial in repeats:
        first = study.trials[int(trial.user_attrs["fail_reason"].split()[4].rstrip(","))]
        assert first.params == trial.params and first.state == TrialState.COMPLETE
        assert trial.state == TrialState.PRUNED and not trial.intermediate_values
    assert len({tuple(t.params.items()) for t in study.trials
                if t.state == TrialState.COMPLETE}) == 2


def test_a_storage_failure_names_its_real_cause(tmp_path, catalog):
    path = tmp_path / "broken.yaml"
    path.write_text(SPACE.replace("  optimizer:", "  breaks_storage: {enabled: true}\n"
                                  "  optimizer:") % {"epochs": 1, "n_trials": 2})
    space = load_space(path, catalog)
    run_dir = tmp_path / "run"
    BreaksStorage.journal = run_dir / "study.journal"
    with pytest.raises(StorageFailed) as caught:
        run_search(space, settings_for(space, run_dir), SilentReporter(),
                   plugins=Plugins(catalog=catalog))
    message = str(caught.value)
    assert "while running trial 0: IsADirectoryError" in message
    assert "Should not reach" not in message and caught.value.exit_code == 1


def test_a_torn_last_journal_line_is_cut_off_and_kept_aside(tmp_path, caplog):
    space = load_space(write_space(tmp_path, n_trials=2), technique_catalog())
    run_dir = tmp_path / "run"
    run_search(space, settings_for(space, run_dir), SilentReporter())
    journal = run_dir / "study.journal"
    intact = journal.read_bytes()
    lines = intact.count(b"\n")
    journal.write_bytes(intact + b'{"op_code": 5, "worker_id": "x", "trial_id"')
    study = run_search(space, settings_for(space, run_dir, n_trials=3), SilentReporter())
    assert f"study.journal:{lines + 1}: the last line was cut off" in caplog.text
    assert journal.read_bytes().startswith(intact)
    assert (run_dir / "study.journal.torn").read_bytes().endswith(b'"trial_id"\n')
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_a_damaged_journal_line_is_refused_naming_it(tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"op_code": 0}\nnot json\n{"op_code": 1}\n')
    with pytest.raises(UserError, match=r"study.journal:2: not a journal record"):
        open_storage(str(journal), tmp_path)
    assert journal.read_bytes() == b'{"op_code": 0}\nnot json\n{"op_code": 1}\n'


def test_passwords_in_storage_urls_are_masked():
    url = "postgresql://ann:s3cret-pw@127.0.0.1:1/studies"
    assert shown_storage(url) == "postgresql://ann:***@127.0.0.1:1/studies"
    failure = storage_failure(OSError("login ann:s3cret-pw refused"), url, "opening it")
    assert "s3cret-pw" not in str(failure) and "ann:***@127.0.0.1" in str(failure)
    with pytest.raises(UserError) as caught:
        open_storage(url, Path("unused"))  # nothing listens on port 1
    assert "s3cret-pw" not in str(caught.value)
    assert str(caught.value).startswith("storage postgresql://ann:***@127.0.0.1:1/studies "
                                        "failed while opening it: OperationalError")


def test_cmaes_is_refused_on_a_shared_database(tmp_path):
    space = load_space(write_space(tmp_path), technique_catalog())
    settings = settings_for(space, tmp_path / "run", sampler="cmaes",
                            storage="postgresql://ann:pw@127.0.0.1:1/studies")
    with pytest.raises(UserError, match="sampler cmaes keeps pickled state"):
        run_search(space, settings, SilentReporter())
    assert not (tmp_path / "run").exists()
