"""Which trials a sweep declares dead, and what happens to a result that finishes anyway.

A pid names one process only within one boot and one pid namespace: containers with host
networking share a hostname but not their pids, so a sweep looks a worker up at once only in
its own pid space and otherwise waits for the heartbeat. A trial declared dead whose worker
still runs it keeps its result as a new trial.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from automl.discovery import technique_catalog
from automl.heartbeat import BEAT, WORKER, pid_space, sweep_stale, this_worker
from automl.hookspecs import hookimpl
from automl.late_results import LATE_RESULT_OF, TrialWrites
from automl.optuna_adapter import set_trial_state, set_trial_system_attr
from automl.report import SilentReporter
from automl.search import SearchSettings, run_search
from automl.search_context import Plugins
from automl.space import load_space
from automl.technique import Technique
from automl.trial_queue import RETRY_OF

optuna.logging.set_verbosity(optuna.logging.WARNING)


def running_trial(study: optuna.Study, worker: dict) -> optuna.Trial:
    trial = study.ask()
    set_trial_system_attr(study, trial, WORKER, worker)
    return trial


def a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_worker_is_its_pid_space_pid_and_start_not_its_hostname_and_pid():
    me = this_worker()
    assert me["pid_space"] == pid_space() is not None and me["started"] is not None
    study = optuna.create_study()
    mine = running_trial(study, me)
    # the same hostname and pid in another container (or after a reboot): not ours to judge
    other_container = running_trial(study, {**me, "pid_space": "another-boot pid:[1]"})
    # the same pid here, started at another time: the pid was reused, its process is gone
    reused_pid = running_trial(study, {**me, "started": str(int(me["started"]) - 1)})
    gone_here = running_trial(study, {**me, "pid": a_dead_pid(), "started": None})
    older_record = running_trial(study, {"host": me["host"], "pid": a_dead_pid(),
                                         "started": None})  # no pid space: heartbeat only
    assert sweep_stale(study) == 2
    states = {t.number: t.state for t in study.get_trials()}
    assert states[mine.number] == states[other_container.number] == TrialState.RUNNING
    assert states[older_record.number] == TrialState.RUNNING
    assert states[reused_pid.number] == states[gone_here.number] == TrialState.FAIL
    reason = study.trials[reused_pid.number].user_attrs["fail_reason"]
    assert reason == f"worker died (pid {me['pid']} on {me['host']} is gone)"


def test_a_result_told_after_a_sweep_is_recorded_as_a_new_trial():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    writes = TrialWrites(study, trial)
    writes.report(0.5, 1)
    set_trial_state(study, trial, TrialState.FAIL)  # another process's sweep
    writes.report(0.6, 2)  # refused by the storage: kept here
    writes.set_user_attr("metrics", {"val/acc1": 0.7})
    assert writes.swept and not writes.should_prune()
    number = writes.tell(TrialState.COMPLETE, 0.7)
    late = study.trials[number]
    assert number != trial.number and study.trials[trial.number].state == TrialState.FAIL
    assert late.state == TrialState.COMPLETE and late.value == 0.7
    assert late.params == trial.params and late.intermediate_values == {1: 0.5, 2: 0.6}
    assert late.user_attrs["metrics"] == {"val/acc1": 0.7}
    assert late.user_attrs[LATE_RESULT_OF] == late.user_attrs[RETRY_OF] == trial.number
    assert study.best_trial.number == number

    failed = study.ask()
    failing = TrialWrites(study, failed)
    set_trial_state(study, failed, TrialState.FAIL)
    assert failing.tell(TrialState.FAIL) == failed.number  # a failure is not recorded twice
    assert len(study.trials) == 3


class SweptAfterEpochOne(Technique):
    """Lets another process's sweep declare this trial dead after its first epoch.

    Helps: testing. Suggested: never. Source: this test.
    """

    name = "swept_after_epoch_one"
    journal: Path

    @hookimpl
    def on_epoch_end(self, state):
        if state.epoch != 0:
            return
        other = optuna.load_study(study_name="swept", storage=JournalStorage(
            JournalFileBackend(str(self.journal))))
        running = other.get_trials(states=(TrialState.RUNNING,))[0]
        set_trial_system_attr(other, running, BEAT, time.time() - 3600)  # silent an hour
        assert sweep_stale(other) == 1


def test_a_trial_swept_while_it_trains_keeps_its_result(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model: automl_resnet8\ndata: {dataset: digits, batch_size: 128}\n"
                    "epochs: 2\ntechniques:\n  swept_after_epoch_one: {enabled: true}\n"
                    "  optimizer: {name: sgd, lr: {type: float, low: 0.02, high: 0.08}}\n"
                    "study: {sampler: random, pruner: none, n_trials: 1, warm_start: false}\n")
    catalog = {**technique_catalog(), "swept_after_epoch_one": SweptAfterEpochOne}
    space = load_space(path, catalog)
    run_dir = tmp_path / "run"
    SweptAfterEpochOne.journal = run_dir / "study.journal"
    settings = SearchSettings.from_space(space, study_name="swept", run_dir=run_dir,
                                         device="cpu")
    study = run_search(space, settings, SilentReporter(), plugins=Plugins(catalog=catalog))

    swept = study.trials[0]
    assert swept.state == TrialState.FAIL
    assert swept.user_attrs["fail_reason"].startswith("worker died")
    late = [t for t in study.trials if t.user_attrs.get(LATE_RESULT_OF) == 0]
    assert len(late) == 1 and late[0].state == TrialState.COMPLETE
    assert late[0].params == swept.params and sorted(late[0].intermediate_values) == [1, 2]
    assert late[0].value == late[0].intermediate_values[2] == \
        late[0].user_attrs["metrics"]["val/acc1"]
    retry = next(t for t in study.trials if t.user_attrs.get(RETRY_OF) == 0
                 and LATE_RESULT_OF not in t.user_attrs)
    assert retry.state == TrialState.PRUNED  # its parameters are done: not trained again
    assert retry.user_attrs["fail_reason"] == f"same parameters as trial {late[0].number}, " \
                                              "not trained again"
    assert (run_dir / "best_recipe.yaml").exists()
