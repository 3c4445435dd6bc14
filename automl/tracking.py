"""Experiment tracking: every trial of a search as one TensorBoard or MLflow run.

For users who already keep their experiments in TensorBoard or MLflow: ``--log tensorboard``
and ``--log mlflow`` record each trial's per-epoch metrics (step = epoch, the steps the
pruner saw) and the values it trained with, one run per trial, grouped per study, and end the
run with the trial's state. The trackers are reporters (:class:`automl.search.Reporter`), so
the driver needs no code of its own for them; every process that trains trials (``--jobs``
workers included) builds its own from ``SearchSettings.log``.

- TensorBoard: ``RUN_DIR/tensorboard/trial-00012/`` holds the trial's scalars and, once it
  ended, its HParams session (the values, ``state`` complete/pruned/failed, and the status:
  success, failure, or unknown for pruned).
- MLflow: an experiment named after the study, a run ``trial-00012`` per trial with params,
  metrics and ``optuna.*`` tags; status FINISHED (complete), KILLED (pruned) or FAILED. The
  store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///RUN_DIR/mlflow.db`` (MLflow's
  file store is in maintenance mode and refuses new runs), read with
  ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``.

A tracker that cannot record (a server gone) costs a warning, never a trial.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.errors import UserError, exception_line

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from automl.recipe import Recipe
    from automl.search import Reporter, SearchSettings

__all__ = ["TARGETS", "parse_targets", "tracked", "trial_params", "run_name", "TENSORBOARD_DIR",
           "MLFLOW_DB"]

TARGETS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
#: What to install for each target (the project's extras).
_INSTALL = {"tensorboard": ("tensorboard", "pip install 'automl-recipes[tensorboard]'"),
            "mlflow": ("mlflow", "pip install 'automl-recipes[mlflow]'")}
_log = logging.getLogger("automl")


def parse_targets(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``--log`` values (repeated, or comma lists) as known target names, each once."""
    targets: list[str] = []
    for value in values:
        for name in (part.strip().lower() for part in value.split(",")):
            if name and name not in TARGETS:
                raise UserError(f"--log {name}: unknown tracker; valid: {', '.join(TARGETS)}")
            if name and name not in targets:
                targets.append(name)
    return tuple(targets)


def run_name(trial_number: int) -> str:
    """A trial's run name: sorts in trial order in every tracker's run list."""
    return f"trial-{trial_number:05d}"


def trial_params(trial: optuna.Trial | FrozenTrial, recipe: Recipe) -> dict[str, Any]:
    """What a trial trained with, by name: model, epochs, seed, the data settings, every
    enabled technique's values as ``technique.param``, and ``technique.enabled`` for each
    technique on, or switched off by the search. (The sampled values are among these: a
    conditional one such as ``optimizer.lr[adamw]`` is ``optimizer.lr`` here.)"""
    from automl.space import DATA_ACCESS_KEYS

    params: dict[str, Any] = {"model": recipe.model, "epochs": recipe.epochs,
                              "seed": recipe.seed}
    params.update({f"data.{k}": v for k, v in recipe.data.items()
                   if k not in DATA_ACCESS_KEYS and v is not None})
    params.update({k: v for k, v in trial.params.items() if k.endswith(".enabled")})
    for name, values in recipe.techniques.items():
        params[f"{name}.enabled"] = True
        params.update({f"{name}.{k}": v for k, v in values.items() if v is not None})
    return {k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in params.items()}


def _state_name(trial: FrozenTrial) -> str:
    from optuna.trial import TrialState

    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())


def _require(target: str):
    """Import a tracker's library; missing, a one-line error naming what to install."""
    module, how = _INSTALL[target]
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"--log {target} needs the {module} package: {how}") from None


def tracked(reporter: Reporter, settings: SearchSettings) -> Reporter:
    """``reporter`` plus a tracker for each of ``settings.log`` (none: ``reporter`` itself).

    Building the trackers imports their libraries, so a missing one stops the search before
    anything runs. Runs still open when the process exits (Ctrl-C) end as failed.
    """
    targets = parse_targets(settings.log)
    if not targets:
        return reporter
    makers = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return Tracking(reporter, [makers[t](settings) for t in targets])


class Tracking:
    """A reporter that tells the user's reporter first, then each tracker.

    A tracker that cannot open its store when the search starts stops it (exit 2, nothing
    trained); one that fails later is switched off with one warning, so tracking never fails
    a trial nor slows the search down with retries to a server that is gone.
    """

    def __init__(self, reporter: Reporter, trackers: list):
        self.reporter, self.trackers = reporter, trackers
        atexit.register(self.close)

    def search_start(self, study, settings, todo) -> None:
        for tracker in self.trackers:
            try:
                tracker.search_start(study)
            except Exception as exc:
                raise UserError(f"--log {tracker.target}: cannot record into "
                                f"{tracker.where()}: {exception_line(exc)}") from None
        self.reporter.search_start(study, settings, todo)

    def trial_start(self, trial, recipe) -> None:
        self.reporter.trial_start(trial, recipe)
        self._each("trial_start", trial, recipe)

    def epoch(self, trial, epoch, epochs, metrics) -> None:
        self.reporter.epoch(trial, epoch, epochs, metrics)
        self._each("epoch", trial, epoch, metrics)

    def trial_end(self, study, trial, new_best) -> None:
        self.reporter.trial_end(study, trial, new_best)
        self._each("trial_end", trial)

    def note(self, text) -> None:
        self.reporter.note(text)

    def close(self) -> None:
        """End the runs of trials that never reported their end (an interrupted search)."""
        self._each("close")

    def _each(self, event: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, event)(*args)
            except Exception as exc:  # tracking is a record, never a reason to stop
                self.trackers.remove(tracker)
                _log.warning("--log %s stopped recording (%s failed: %s); the search goes on",
                             tracker.target, event, exception_line(exc))


class TensorBoardTracker:
    """One event-file folder per trial: scalars every epoch, the HParams session at its end."""

    target = "tensorboard"

    def __init__(self, settings: SearchSettings):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.root = Path(settings.run_dir) / TENSORBOARD_DIR
        self.open: dict[int, tuple[Any, dict[str, Any]]] = {}  # number -> (writer, params)

    def where(self) -> str:
        return str(self.root)

    def search_start(self, study) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def trial_start(self, trial, recipe) -> None:
        writer = self._writer_class(log_dir=str(self.root / run_name(trial.number)))
        self.open[trial.number] = (writer, trial_params(trial, recipe))

    def epoch(self, trial, epoch: int, metrics: dict[str, float]) -> None:
        writer = self.open[trial.number][0]
        for key, value in metrics.items():
            writer.add_scalar(key, value, epoch)

    def trial_end(self, trial: FrozenTrial) -> None:
        if trial.number in self.open:
            self._end(trial.number, _state_name(trial), trial.user_attrs.get("fail_reason"))

    def close(self) -> None:
        for number in list(self.open):
            self._end(number, "failed", "the search stopped while it ran")

    def _end(self, number: int, state: str, reason: str | None) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        writer, params = self.open.pop(number)
        try:
            start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
            for key, value in {**params, "state": state}.items():
                kind = ("bool_value" if isinstance(value, bool) else
                        "string_value" if isinstance(value, str) else "number_value")
                setattr(start.hparams[key], kind, value)
            status = {"complete": api_pb2.STATUS_SUCCESS,
                      "failed": api_pb2.STATUS_FAILURE}.get(state, api_pb2.STATUS_UNKNOWN)
            end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
            writer.file_writer.add_summary(_hparams_summary(session_start_info=start))
            writer.file_writer.add_summary(_hparams_summary(session_end_info=end))
            if reason:
                writer.add_text("trial/reason", f"{state}: {reason}")
        finally:
            writer.close()


def _hparams_summary(**data):
    """A summary the HParams plugin reads (what ``torch.utils.tensorboard.summary.hparams``
    writes, with the session's real status instead of always success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    tag = (metadata.SESSION_START_INFO_TAG if "session_start_info" in data
           else metadata.SESSION_END_INFO_TAG)
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
    return Summary(value=[Summary.Value(tag=tag, metadata=content)])


class MlflowTracker:
    """One MLflow run per trial in the experiment named after the study."""

    target = "mlflow"
    STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}

    def __init__(self, settings: SearchSettings):
        _require("mlflow")
        self.settings = settings
        self.client = None
        self.experiment_id: str | None = None
        self.open: dict[int, str] = {}  # trial number -> run id

    def where(self) -> str:
        from automl.storage import shown_storage

        return shown_storage(self.tracking_uri())  # a password in the URI is masked

    def tracking_uri(self) -> str:
        """``MLFLOW_TRACKING_URI``, else a SQLite file in the run folder."""
        return os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(Path(self.settings.run_dir) / MLFLOW_DB).resolve()}"

    def search_start(self, study) -> None:
        """Create the store and experiment before any worker starts (workers would race to
        create the database's tables)."""
        self._experiment()

    def _experiment(self) -> str:
        if self.experiment_id is None:
            from mlflow import MlflowClient

            uri = self.tracking_uri()
            artifacts = None
            if "MLFLOW_TRACKING_URI" not in os.environ:
                Path(self.settings.run_dir).mkdir(parents=True, exist_ok=True)
                artifacts = (Path(self.settings.run_dir) / "mlflow-artifacts").resolve().as_uri()
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating
            self.client = MlflowClient(tracking_uri=uri)  # initial tables": not the user's news
            name = self.settings.study_name
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        name, artifact_location=artifacts)
                except Exception:  # another process created it meanwhile
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def trial_start(self, trial, recipe) -> None:
        from mlflow.entities import Param

        experiment = self._experiment()
        run = self.client.create_run(experiment, run_name=run_name(trial.number), tags={
            "optuna.study_name": self.settings.study_name,
            "optuna.trial_number": str(trial.number),
            "optuna.metric": self.settings.metric,
            "optuna.direction": self.settings.direction,
            **{f"automl.{k}": str(v) for k, v in trial.user_attrs.items()
               if k in ("baseline", "warm_start")}})
        self.open[trial.number] = run.info.run_id
        params = [Param(k, str(v)) for k, v in trial_params(trial, recipe).items()]
        for at in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(run.info.run_id, params=params[at:at + 100])

    def epoch(self, trial, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.open[trial.number], metrics=[
            Metric(key, float(value), now, epoch) for key, value in metrics.items()])

    def trial_end(self, trial: FrozenTrial) -> None:
        if trial.number in self.open:
            self._end(trial.number, _state_name(trial), trial.user_attrs.get("fail_reason"))

    def close(self) -> None:
        for number in list(self.open):
            self._end(number, "failed", "the search stopped while it ran")

    def _end(self, number: int, state: str, reason: str | None) -> None:
        run_id = self.open.pop(number)
        self.client.set_tag(run_id, "optuna.state", state)
        if reason:
            self.client.set_tag(run_id, "optuna.fail_reason", reason)
        self.client.set_terminated(run_id, self.STATUS.get(state, "FAILED"))
