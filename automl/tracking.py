"""Experiment tracking: every trial of a search as one TensorBoard or MLflow run.

For users who already keep their experiments in TensorBoard or MLflow: ``--log tensorboard``
and ``--log mlflow`` record each trial's per-epoch metrics (step = epoch, the steps the
pruner saw) and the values it trained with, one run per trial, grouped per study, and end the
run with the trial's state. They are called through a reporter (:class:`Tracking`, see
:class:`automl.search.Reporter`), so the driver has no code of its own for them; every
process that trains trials (``--jobs`` workers included) builds its own from
``SearchSettings.log``. ``automl train --log`` records
its training the same way, as one run (:func:`track_training`).

- TensorBoard: ``RUN_DIR/tensorboard/trial-00012/`` holds the trial's scalars and, once it
  ended, its HParams session (the values, ``state`` complete/pruned/failed, and the status:
  success, failure, or unknown for pruned).
- MLflow: an experiment named after the study, a run ``trial-00012`` per trial with params,
  metrics and ``optuna.*`` tags; status FINISHED (complete), KILLED (pruned) or FAILED. The
  store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///RUN_DIR/mlflow.db`` (MLflow's
  file store is in maintenance mode and refuses new runs), read with
  ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``.

A store that cannot be opened when the search starts is an error (exit 2, nothing trained);
a tracker that fails later is switched off with one warning, and never fails a trial.
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

__all__ = ["TARGETS", "parse_targets", "tracked", "track_training", "trial_params",
           "recipe_params", "run_name", "TENSORBOARD_DIR", "MLFLOW_DB"]

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


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    """What a recipe trains with, by name: model, epochs, seed, the data settings, and every
    enabled technique as ``technique.enabled`` and its values as ``technique.param``."""
    from automl.space import DATA_ACCESS_KEYS

    params: dict[str, Any] = {"model": recipe.model, "epochs": recipe.epochs,
                              "seed": recipe.seed}
    params.update({f"data.{k}": v for k, v in recipe.data.items()
                   if k not in DATA_ACCESS_KEYS and v is not None})
    for name, values in recipe.techniques.items():
        params[f"{name}.enabled"] = True
        params.update({f"{name}.{k}": v for k, v in values.items() if v is not None})
    return {k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in params.items()}


def trial_params(trial: optuna.Trial | FrozenTrial, recipe: Recipe) -> dict[str, Any]:
    """:func:`recipe_params`, plus ``technique.enabled`` false for each technique the search
    switched off. (The sampled values are among these: a conditional one such as
    ``optimizer.lr[adamw]`` is ``optimizer.lr`` here.)"""
    off = {k: v for k, v in trial.params.items() if k.endswith(".enabled") and v is False}
    return {**off, **recipe_params(recipe)}


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


def _trackers(targets: tuple[str, ...], folder: Path, experiment: str) -> list:
    """One tracker per target, recording under ``folder`` (TensorBoard; MLflow's default
    store) into ``experiment`` (MLflow). Importing the libraries here makes a missing one an
    error before anything runs."""
    makers = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return [makers[t](Path(folder), experiment) for t in parse_targets(targets)]


class _Recording:
    """Calls to the trackers: a tracker that fails is switched off with one warning, so
    tracking never fails a trial nor slows a search down with retries to a server that is
    gone; runs still open when the process exits (Ctrl-C) end as failed."""

    def __init__(self, trackers: list):
        self.trackers = trackers
        atexit.register(self.close)

    def prepare(self) -> None:
        """Open every store now: one that cannot be opened is an error (exit 2)."""
        for tracker in self.trackers:
            try:
                tracker.prepare()
            except Exception as exc:
                raise UserError(f"--log {tracker.target}: cannot record into "
                                f"{tracker.where()}: {exception_line(exc)}") from None

    def close(self) -> None:
        """End the runs that never reported their end (an interrupted search)."""
        self._each("close")

    def _each(self, event: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, event)(*args)
            except Exception as exc:  # tracking is a record, never a reason to stop
                self.trackers.remove(tracker)
                _log.warning("--log %s stopped recording (%s failed: %s); training goes on",
                             tracker.target, event, exception_line(exc))


def tracked(reporter: Reporter, settings: SearchSettings) -> Reporter:
    """``reporter`` plus a tracker for each of ``settings.log`` (none: ``reporter`` itself):
    each trial one run, ``trial-00012``, in ``RUN_DIR`` / the experiment named after the
    study."""
    if not settings.log:
        return reporter
    return Tracking(reporter, _trackers(settings.log, settings.run_dir, settings.study_name),
                    settings)


class Tracking(_Recording):
    """A search reporter: tells the user's reporter first, then each tracker. The stores
    are opened when the search starts, before any worker process does (workers would race
    to create MLflow's tables)."""

    def __init__(self, reporter: Reporter, trackers: list, settings: SearchSettings):
        super().__init__(trackers)
        self.reporter, self.settings = reporter, settings

    def search_start(self, study, settings, todo) -> None:
        self.prepare()
        self.reporter.search_start(study, settings, todo)

    def trial_start(self, trial, recipe) -> None:
        self.reporter.trial_start(trial, recipe)
        tags = {"optuna.study_name": self.settings.study_name,
                "optuna.trial_number": str(trial.number),
                "optuna.metric": ", ".join(self.settings.metrics),
                "optuna.direction": ", ".join(self.settings.directions),
                **{f"automl.{k}": str(v) for k, v in trial.user_attrs.items()
                   if k in ("baseline", "warm_start")}}
        self._each("start", trial.number, run_name(trial.number), trial_params(trial, recipe),
                   tags)

    def epoch(self, trial, epoch, epochs, metrics) -> None:
        self.reporter.epoch(trial, epoch, epochs, metrics)
        self._each("log", trial.number, epoch, metrics)

    def trial_end(self, study, trial, new_best) -> None:
        self.reporter.trial_end(study, trial, new_best)
        self._each("end", trial.number, _state_name(trial), trial.user_attrs.get("fail_reason"))

    def note(self, text) -> None:
        self.reporter.note(text)


def track_training(targets: tuple[str, ...], out: Path, recipe: Recipe) -> TrainingRun | None:
    """``automl train --log``: the training as one run, named after ``out``, in ``out`` / the
    experiment of the study the recipe came from (its provenance), else ``automl-train``;
    None without targets. A missing package or a store that cannot be opened is an error
    now, before training; the run itself starts with the first epoch."""
    if not targets:
        return None
    provenance = recipe.provenance if isinstance(recipe.provenance, dict) else {}
    study = provenance.get("study")
    experiment = study if isinstance(study, str) and study else "automl-train"
    tags = {f"automl.recipe_{k}": str(provenance[k]) for k in ("study", "trial")
            if k in provenance}
    run = TrainingRun(_trackers(targets, out, experiment), Path(out).name,
                      recipe_params(recipe), tags)
    run.prepare()
    return run


class TrainingRun(_Recording):
    """One training's epochs, then its end (the test scores logged at the last epoch)."""

    def __init__(self, trackers: list, name: str, params: dict[str, Any], tags: dict[str, str]):
        super().__init__(trackers)
        self.name, self.params, self.tags = name, params, tags
        self.last = 0  # the last epoch logged; 0: not started

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.last:
            self._each("start", 0, self.name, self.params, self.tags)
        self.last = epoch
        self._each("log", 0, epoch, metrics)

    def end(self, state: str, metrics: dict[str, float] | None = None,
            reason: str | None = None) -> None:
        if metrics and self.last:
            self._each("log", 0, self.last,
                       {k: v for k, v in metrics.items() if k.startswith("test/")})
        self._each("end", 0, state, reason)


class _OpenRuns:
    """What every tracker shares: the runs it holds open, by key; each ends once, and a run
    still open when the process stops ends as failed."""

    open: dict[int, Any]

    def end(self, key: int, state: str, reason: str | None) -> None:
        if key in self.open:
            self._end(key, state, reason)

    def close(self) -> None:
        for key in list(self.open):
            self._end(key, "failed", "stopped while it ran")

    def _end(self, key: int, state: str, reason: str | None) -> None:
        raise NotImplementedError


class TensorBoardTracker(_OpenRuns):
    """One event-file folder per run: scalars every epoch, the HParams session at its end."""

    target = "tensorboard"

    def __init__(self, folder: Path, experiment: str):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.root = folder / TENSORBOARD_DIR
        self.open: dict[int, tuple[Any, dict[str, Any]]] = {}  # key -> (writer, params)

    def where(self) -> str:
        return str(self.root)

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self, key: int, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self.open[key] = (self._writer_class(log_dir=str(self.root / name)), params)

    def log(self, key: int, step: int, metrics: dict[str, float]) -> None:
        if key in self.open:
            writer = self.open[key][0]
            for name, value in metrics.items():
                writer.add_scalar(name, value, step)

    def _end(self, key: int, state: str, reason: str | None) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        writer, params = self.open.pop(key)
        try:
            start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
            for name, value in {**params, "state": state}.items():
                kind = ("bool_value" if isinstance(value, bool) else
                        "string_value" if isinstance(value, str) else "number_value")
                setattr(start.hparams[name], kind, value)
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


class MlflowTracker(_OpenRuns):
    """One MLflow run per key in one experiment."""

    target = "mlflow"
    STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}

    def __init__(self, folder: Path, experiment: str):
        _require("mlflow")
        self.folder, self.experiment = folder, experiment
        self.client = None
        self.experiment_id: str | None = None
        self.open: dict[int, str] = {}  # key -> run id

    def where(self) -> str:
        from automl.storage import shown_storage

        return shown_storage(self.tracking_uri())  # a password in the URI is masked

    def tracking_uri(self) -> str:
        """``MLFLOW_TRACKING_URI``, else a SQLite file in the folder."""
        return os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(self.folder / MLFLOW_DB).resolve()}"

    def prepare(self) -> str:
        """The experiment's id; the store and experiment are created on first use."""
        if self.experiment_id is None:
            from mlflow import MlflowClient

            artifacts = None
            if "MLFLOW_TRACKING_URI" not in os.environ:
                self.folder.mkdir(parents=True, exist_ok=True)
                artifacts = (self.folder / "mlflow-artifacts").resolve().as_uri()
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating
            self.client = MlflowClient(tracking_uri=self.tracking_uri())  # tables": no news
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=artifacts)
                except Exception:  # another process created it meanwhile
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def start(self, key: int, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        experiment = self.prepare()  # in a worker process: the first use opens the store
        run = self.client.create_run(experiment, run_name=name, tags=tags)
        self.open[key] = run.info.run_id
        values = [Param(k, str(v)) for k, v in params.items()]
        for at in range(0, len(values), 100):  # MLflow's limit per batch
            self.client.log_batch(run.info.run_id, params=values[at:at + 100])

    def log(self, key: int, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if key in self.open:
            now = int(time.time() * 1000)
            self.client.log_batch(self.open[key], metrics=[
                Metric(name, float(value), now, step) for name, value in metrics.items()])

    def _end(self, key: int, state: str, reason: str | None) -> None:
        run_id = self.open.pop(key)
        self.client.set_tag(run_id, "optuna.state", state)
        if reason:
            self.client.set_tag(run_id, "optuna.fail_reason", reason)
        self.client.set_terminated(run_id, self.STATUS.get(state, "FAILED"))
