"""Experiment tracking (`--log tensorboard|mlflow`) read back with each library's own reader,
and `automl dashboard` serving a study's journal."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from automl.cli import cli
from automl.discovery import technique_catalog, training_manager
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.search import Plugins, SearchSettings, run_search
from automl.space import load_space
from automl.storage import open_storage
from automl.tracking import parse_targets

SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 2
techniques:
  optimizer: {}
  lr_schedule: {}
  flip: {}
  label_smoothing: {}
study: {sampler: random, pruner: none, n_trials: 3, warm_start: false, confirm_top: 0}
"""


def _need(module: str):
    """The tracker's library; CI installs the `test` extra, so there a missing one fails."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


class _EndsBadly:
    """Trial 1 diverges in its second epoch (pruned), trial 2 raises there (failed)."""

    def __init__(self, how: str | None):
        self.how = how

    @hookimpl
    def on_epoch_start(self, state):
        if self.how == "raise" and state.epoch == 1:
            raise RuntimeError("broken on purpose")

    @hookimpl
    def after_loss(self, state):
        if self.how == "nan" and state.epoch == 1:
            state.loss = state.loss * float("nan")


@pytest.fixture(scope="module")
def tracked_search(tmp_path_factory):
    """The 3-trial search (complete, pruned, failed) recorded by both trackers, run once for
    the tests that read the records back."""
    _need("tensorboard")
    _need("mlflow")
    built = []

    def manager(recipe, catalog=None, extra_plugins=()):
        built.append(recipe)
        how = {1: "nan", 2: "raise"}.get(len(built) - 1)
        return training_manager(recipe, catalog, extra_plugins=[*extra_plugins, _EndsBadly(how)])

    tmp_path = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        study = run_search(*_setup(tmp_path, SPACE, log=("tensorboard", "mlflow")),
                           SilentReporter(), plugins=Plugins(manager_factory=manager))
    assert _states(study) == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert len(study.trials[0].intermediate_values) == 2  # the complete one has both epochs
    assert len(study.trials[1].intermediate_values) == 1  # pruned in the second
    return study, tmp_path / "run"


def _setup(tmp_path: Path, text: str, **extra):
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name=path.stem, run_dir=tmp_path / "run",
                                         device="cpu", **extra)
    return space, settings


def _states(study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def _check_params(values: dict, trial) -> None:
    """The sampled parameters are there under their technique.param names, and the recipe's
    values too."""
    recipe = trial.user_attrs["recipe"]
    assert values["model"] == recipe["model"] and int(values["epochs"]) == recipe["epochs"]
    for name, value in trial.params.items():
        assert values[name.split("[")[0]] in (value, str(value)), name
    for technique, params in recipe["techniques"].items():
        for key, value in params.items():
            assert values[f"{technique}.{key}"] in (value, str(value)), f"{technique}.{key}"


def _mlflow_runs(db: Path, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    found = client.get_experiment_by_name(experiment)
    return client, {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def test_tensorboard_records_one_run_per_trial_with_its_epochs_values_and_end(tracked_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    study, run_dir = tracked_search
    folders = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert folders == ["trial-00000", "trial-00001", "trial-00002"]
    expected_status = [api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_FAILURE]
    for trial, folder, status in zip(study.trials, folders, expected_status, strict=True):
        events = EventAccumulator(str(run_dir / "tensorboard" / folder),
                                  size_guidance={"scalars": 0})
        events.Reload()
        curve = {e.step: e.value for e in events.Scalars("val/acc1")}
        assert curve.keys() == trial.intermediate_values.keys()
        assert curve == pytest.approx(trial.intermediate_values, rel=1e-6)  # float32 there
        assert len(events.Scalars("train/loss")) == len(curve)
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert hparams["state"] == ["complete", "pruned", "failed"][trial.number]
        _check_params(hparams, trial)
        end = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_end_info"]).session_end_info
        assert end.status == status


def test_mlflow_records_one_run_per_trial_in_the_studys_experiment(tracked_search):
    study, run_dir = tracked_search
    client, runs = _mlflow_runs(run_dir / "mlflow.db", "tiny")
    assert sorted(runs) == ["trial-00000", "trial-00001", "trial-00002"]
    for trial in study.trials:
        run = runs[f"trial-{trial.number:05d}"]
        history = client.get_metric_history(run.info.run_id, "val/acc1")
        assert {m.step: m.value for m in history} == trial.intermediate_values
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(history)
        _check_params(run.data.params, trial)
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
    status = {name: (r.info.status, r.data.tags["optuna.state"]) for name, r in runs.items()}
    assert status == {"trial-00000": ("FINISHED", "complete"),
                      "trial-00001": ("KILLED", "pruned"),
                      "trial-00002": ("FAILED", "failed")}
    assert "broken on purpose" in runs["trial-00002"].data.tags["optuna.fail_reason"]
    assert runs["trial-00000"].data.tags["automl.baseline"] == "True"


def test_worker_processes_record_their_trials_too(tracked_search, tmp_path, monkeypatch):
    """--jobs 2: each worker process builds its own tracker; one run per trial all the same,
    here in the store MLFLOW_TRACKING_URI names (a copy of the first search's, so the
    database exists and only the experiment is new)."""
    db = tmp_path / "shared.db"
    shutil.copy(tracked_search[1] / "mlflow.db", db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    text = SPACE.replace("epochs: 2", "epochs: 1").replace("n_trials: 3", "n_trials: 2")
    space, settings = _setup(tmp_path, text, jobs=2, log=("mlflow",))
    settings.study_name = "jobs"
    study = run_search(space, settings, SilentReporter())
    assert _states(study) == [TrialState.COMPLETE] * 2
    assert not (settings.run_dir / "mlflow.db").exists()
    client, runs = _mlflow_runs(db, "jobs")
    assert sorted((name, r.info.status) for name, r in runs.items()) == \
        [("trial-00000", "FINISHED"), ("trial-00001", "FINISHED")]
    for trial in study.trials:
        history = client.get_metric_history(runs[f"trial-{trial.number:05d}"].info.run_id,
                                            "val/acc1")
        assert {m.step: m.value for m in history} == trial.intermediate_values


def test_an_interrupted_trial_ends_its_runs_as_failed(tmp_path):
    """Ctrl-C in the middle of a trial: its TensorBoard session and MLflow run end as failed
    (not left running forever) when the process exits."""
    _need("tensorboard")
    _need("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    space = tmp_path / "stop.yaml"
    space.write_text(SPACE.replace("epochs: 2", "epochs: 30"))
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from automl.cli import main; main()", "search", str(space),
         "--out", str(run_dir), "--device", "cpu", "--log", "tensorboard,mlflow"],
        env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 180
    while not (run_dir / "tensorboard" / "trial-00000").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(process.communicate()[1]) from None
    assert process.returncode == 130, err
    events = EventAccumulator(str(run_dir / "tensorboard" / "trial-00000"))
    events.Reload()
    end = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_FAILURE
    _, runs = _mlflow_runs(run_dir / "mlflow.db", "stop")
    assert runs["trial-00000"].info.status == "FAILED"
    assert runs["trial-00000"].data.tags["optuna.fail_reason"] == \
        "stopped while it ran"


def test_a_store_that_cannot_be_opened_stops_the_search_before_any_trial(tmp_path,
                                                                          monkeypatch):
    _need("mlflow")
    (tmp_path / "a-file").write_text("")
    store = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # a folder that cannot exist
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    result = CliRunner().invoke(cli, ["search", str(space), "--log", "mlflow", "--out",
                                      str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: --log mlflow: cannot record into {store}: ")
    assert len(result.output.strip().splitlines()) == 1
    study = optuna.load_study(study_name="tiny",
                              storage=open_storage(None, tmp_path / "run"))
    assert {t.state for t in study.trials} == {TrialState.WAITING}


def test_train_log_records_the_training_as_one_run(tracked_search, tmp_path, monkeypatch):
    """`automl train --log`: every epoch, the test scores and the values, in the experiment
    of the study the recipe came from."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "T"
    result = CliRunner().invoke(cli, ["train", str(tracked_search[1] / "best_recipe.yaml"),
                                      "--out", str(out), "--device", "cpu",
                                      "--log", "tensorboard,mlflow"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    client, runs = _mlflow_runs(out / "mlflow.db", "tiny")
    assert list(runs) == ["T"] and runs["T"].info.status == "FINISHED"
    run_id = runs["T"].info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/acc1")] == \
        [(h["epoch"], h["val/acc1"]) for h in record["history"]]
    assert runs["T"].data.metrics["test/acc1"] == record["metrics"]["test/acc1"]
    assert runs["T"].data.params["model"] == "automl_resnet8"
    events = EventAccumulator(str(out / "tensorboard" / "T"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/acc1")] == \
        pytest.approx([h["val/acc1"] for h in record["history"]], rel=1e-6)


def test_log_targets_are_named_once_each():
    assert parse_targets(("tensorboard,mlflow", "mlflow")) == ("tensorboard", "mlflow")
    assert parse_targets(()) == ()


def test_unknown_tracker_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--log", "wandb", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip() == \
        "Error: --log wandb: unknown tracker; valid: tensorboard, mlflow"


@pytest.mark.parametrize("target, module", [("mlflow", "mlflow"),
                                            ("tensorboard", "tensorboard")])
def test_a_missing_tracker_package_stops_before_any_trial(tmp_path, monkeypatch, target,
                                                           module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--log", target, "--out", str(out),
                                      "--n-trials", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"Error: --log {target} needs the {module} package: "
                                     f"pip install 'automl-recipes[{target}]'")
    assert not (out / "study.journal").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


def test_dashboard_serves_the_studys_journal(tmp_path):
    """`automl dashboard` in its own process: optuna-dashboard lists the study over HTTP."""
    _need("optuna_dashboard")
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage=open_storage(None, run_dir))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from automl.cli import main; main()", "dashboard",
         "--study-name", "tiny", "--out", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies = None
        deadline = time.monotonic() + 60
        while studies is None and time.monotonic() < deadline and server.poll() is None:
            try:
                studies = _get_json(port, "/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, server.stdout.read() if server.poll() is not None else ""
        assert [s["study_name"] for s in studies] == ["tiny"]
        detail = _get_json(port, f"/api/studies/{studies[0]['study_id']}")
        assert [t["params"][0]["param_internal_value"] for t in detail["trials"]] == \
            [t.params["x"] for t in study.trials]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_without_optuna_dashboard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    result = CliRunner().invoke(cli, ["dashboard", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: automl dashboard needs the optuna-dashboard "
                                     "package: pip install 'automl-recipes[dashboard]'")
