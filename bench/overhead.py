"""Search overhead: the share of each trial's wall time spent outside training, per storage.

Runs the real ``automl.search.run_search`` on a small space (digits, automl_resnet8, 1 epoch,
TPE, no pruner, a handful of techniques) three times, with the study in memory, in a journal
file and in SQLite, and splits the wall time of each search into exclusive parts: every
second is charged to the innermost part running at that moment, and the parts add up to the
search's wall time.

- training: each epoch from the last ``on_epoch_start`` hook to the first ``on_epoch_end``
  hook (a bench-only plugin with ``trylast``/``tryfirst`` hooks, added to every trial's
  manager): the epoch's shuffle (``epoch_order``) and its whole batch loop (augmentation,
  forward, loss, backward, optimizer and scheduler steps, per-batch hooks). The rest of the
  trial is overhead:
- sampling: the sampler's own methods (TPE's relative sampling at ``study.ask``, independent
  draws) and ``space.sample`` (the ``suggest_*`` calls), less the storage calls they make;
- storage: every call into the storage object from the search's thread (creating and reading
  trials, parameters, user attributes, intermediate values, the sampler's reads of past
  trials);
- plugin manager: ``training_manager`` (a fresh pluggy manager per trial);
- model build: ``automl.trainer.prepare`` (model, optimizer, scheduler, loss, EMA copy);
- evaluation: ``automl.trainer.evaluate`` (validation after the epoch);
- export: writing ``best_recipe.yaml`` (after each new best, and once at the end);
- gc: garbage collections outside training (the search's ``release_memory`` after each
  trial, automatic collections between epochs and trials);
- other: the remainder (the trial loop's glue, the heartbeat thread's start and stop, the
  one-time study setup amortised over the trials).

``run_search`` opens its storage with ``automl.storage.open_storage``, which gives a journal
file or an RDB, never memory; for the in-memory run the bench replaces that one call (in
``automl.study_lifecycle`` only) with ``optuna.storages.InMemoryStorage()``, so the rest of
the search runs unchanged. The plugin manager factory and the epoch timer reach the search
through its :class:`automl.search.Plugins`; other functions are timed by wrapping them where
the product looks them up (``automl.study_lifecycle``, ``automl.trainer``) for the duration of
the run; CUDA is synchronised at every part boundary so asynchronous kernels are charged to
the part that launched them.

With ``--postgresql URL`` (or ``AUTOML_TEST_POSTGRESQL`` set, e.g. by ``.ci/postgres.sh
start``) a fourth search runs on that PostgreSQL database, each search in a study of its own.

A warm-up search (one trial per storage) runs first, so imports and first-call kernel setup
are not counted. ``--quick`` trains on the first 5 batches of training images (5 steps per
epoch) for 10 trials: a smoke run whose overhead share is not comparable with the full run's.

Torch runs on one CPU thread unless ``--threads`` says otherwise: on a small shared machine,
two threads whose cores are also busy with other work wait at every parallel region, which
made a training step several times slower and the figures meaningless.

    python -m bench.overhead [--quick] [--trials N] [--device cpu|cuda] [--threads N]
                             [--postgresql URL] [--label TEXT]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from pathlib import Path
from unittest import mock

import optuna
import torch

import automl.search
import automl.study_lifecycle
import automl.trainer
from automl.data import DataBundle, Split, load_data
from automl.discovery import technique_catalog, training_manager
from automl.hookspecs import hookimpl
from automl.report import SilentReporter
from automl.space import SearchSpace, load_space
from automl.trainer import resolve_device

from .common import device_name, report

TARGET = 0.02
SPACE_YAML = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 32}
epochs: 1
seed: 0
techniques:
  optimizer: {}
  lr_schedule: {}
  weight_decay: {}
  flip: {}
  random_crop: {}
  mixup: {}
  label_smoothing: {}
study: {sampler: tpe, pruner: none, n_trials: 100, metric: val/acc1, direction: maximize}
"""
STORAGES = ("in-memory", "journal", "sqlite")
PARTS = ("sampling", "storage", "plugin manager", "model build", "evaluation", "export", "gc",
         "other")
SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent",
                   "before_trial", "after_trial")
QUICK_STEPS = 5
QUICK_TRIALS = 10


class Ledger:
    """Exclusive wall time per part: each interval goes to the innermost part open then."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.full_collections = 0  # generation-2 collections outside training
        self.stack: list[str] = []
        self.thread = threading.get_ident()
        self.mark = self.started = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        self.seconds[self.stack[-1] if self.stack else "other"] += now - self.mark
        self.mark = now

    def close(self) -> float:
        """Charge the time since the last boundary; the wall time since the ledger began."""
        self._charge()
        return self.mark - self.started

    def enter(self, part: str, sync: bool = True) -> bool:
        """Open ``part``; only the search's own thread is accounted (not heartbeat threads)."""
        if threading.get_ident() != self.thread:
            return False
        if sync:
            self.sync()
        self._charge()
        if part not in self.stack:  # a call, not its nested calls of the same part
            self.calls[part] += 1
        self.stack.append(part)
        return True

    def leave(self, sync: bool = True) -> None:
        if sync:
            self.sync()
        self._charge()
        self.stack.pop()

    def timed(self, part: str, fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args, **kwargs):
            entered = self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                if entered:
                    self.leave()
        return wrapper

    def time_methods(self, obj: object, names: list[str] | tuple[str, ...], part: str) -> object:
        """Shadow ``obj``'s bound methods with timed ones (instance attributes)."""
        for name in names:
            if callable(getattr(obj, name, None)):
                setattr(obj, name, self.timed(part, getattr(obj, name)))
        return obj

    def on_gc(self, phase: str, info: dict) -> None:
        """gc callback: a collection outside training is charged to ``gc``."""
        if phase == "start" and "training" not in self.stack:
            self.full_collections += info["generation"] == 2
            self.enter("gc", sync=False)
        elif phase == "stop" and self.stack and self.stack[-1] == "gc":
            self.leave(sync=False)


class EpochTimer:
    """Bench-only plugin: charges each epoch's shuffle and batch loop to ``training``."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    @hookimpl(trylast=True)
    def on_epoch_start(self, state):
        self.ledger.enter("training")

    @hookimpl(tryfirst=True)
    def on_epoch_end(self, state):
        self.ledger.leave()


def storage_methods(storage: optuna.storages.BaseStorage) -> list[str]:
    """Every public method (the trial queue, the stale-trial sweep and the heartbeats call
    only these).

    An RDB is timed through the cache layer Optuna puts in front of it (``get_storage``), the
    object the study calls: its reads of the database go through private methods.
    """
    return [n for n in dir(type(storage)) if not n.startswith("_")]


def instrumented(ledger: Ledger, kind: str) -> ExitStack:
    """Patch the product's look-ups so every part of a search is charged to the ledger."""
    lifecycle = automl.study_lifecycle
    real_open, real_sampler = lifecycle.open_storage, lifecycle.make_sampler

    def open_storage(storage, run_dir):
        backend = optuna.storages.InMemoryStorage() if kind == "in-memory" \
            else real_open(storage, run_dir)
        backend = optuna.storages.get_storage(backend)  # an RDB gets Optuna's cache layer now
        return ledger.time_methods(backend, storage_methods(backend), "storage")

    def make_sampler(name, seed, *args):
        return ledger.time_methods(real_sampler(name, seed, *args), SAMPLER_METHODS, "sampling")

    stack = ExitStack()
    for module, name, new in (
            (lifecycle, "open_storage", open_storage),
            (lifecycle, "make_sampler", make_sampler),
            (lifecycle, "write_atomic", ledger.timed("export", lifecycle.write_atomic)),
            (automl.trainer, "prepare", ledger.timed("model build", automl.trainer.prepare)),
            (automl.trainer, "evaluate", ledger.timed("evaluation", automl.trainer.evaluate))):
        stack.enter_context(mock.patch.object(module, name, new))
    gc.callbacks.append(ledger.on_gc)
    stack.callback(gc.callbacks.remove, ledger.on_gc)
    return stack


def run(kind: str, space: SearchSpace, data: DataBundle, trials: int, device: torch.device,
        workdir: Path, postgresql: str | None = None) -> dict:
    """One instrumented search; per-trial means of its parts."""
    run_dir = workdir / kind
    url = {"sqlite": f"sqlite:///{run_dir / 'study.db'}", "postgresql": postgresql}.get(kind)
    run_dir.mkdir(parents=True)
    settings = automl.search.SearchSettings.from_space(  # a new study in a shared database
        space, study_name=f"overhead-{workdir.name}-{time.time_ns()}", run_dir=run_dir,
        storage=url, device=str(device), n_trials=trials)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ledger = Ledger(sync)
    plugins = automl.search.Plugins(
        manager_factory=ledger.timed("plugin manager", training_manager),
        extra=(EpochTimer(ledger),))
    with instrumented(ledger, kind):
        space.sample = ledger.timed("sampling", space.sample)
        try:
            study = automl.search.run_search(space, settings, SilentReporter(), data,
                                             plugins=plugins)
            wall = ledger.close()
        finally:
            del space.sample
    done = sum(t.state in automl.search.FINISHED for t in study.get_trials(deepcopy=False))
    training = ledger.seconds["training"]
    return {
        "trials": done, "complete": len(study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
        "mean_trial_s": round(wall / done, 4), "mean_training_s": round(training / done, 4),
        "overhead_share": round(1 - training / wall, 4),
        "overhead_share_without_gc": round(1 - training / (wall - ledger.seconds["gc"]), 4),
        "overhead_ms_per_trial": {p: round(1000 * ledger.seconds[p] / done, 2) for p in PARTS},
        "target_met": 1 - training / wall < TARGET,
        "storage_calls_per_trial": round(ledger.calls["storage"] / done, 1),
        "full_gc_per_trial": round(ledger.full_collections / done, 2),
    }


def print_tables(results: dict[str, dict]) -> None:
    print(f"{'storage':<10} {'trials':>6} {'trial s':>8} {'training s':>10} {'overhead':>9}"
          f" {'(no gc)':>8}  target < {TARGET:.0%}")
    for kind, r in results.items():
        print(f"{kind:<10} {r['trials']:>6} {r['mean_trial_s']:>8.3f} "
              f"{r['mean_training_s']:>10.3f} {r['overhead_share']:>9.2%} "
              f"{r['overhead_share_without_gc']:>8.2%}  "
              f"{'met' if r['target_met'] else 'missed'}")
    print(f"\n{'overhead, ms per trial':<22}" + "".join(f"{k:>11}" for k in results))
    for part in PARTS:
        print(f"{part:<22}" + "".join(f"{r['overhead_ms_per_trial'][part]:>11.1f}"
                                      for r in results.values()))
    for kind, r in results.items():
        if not r["target_met"]:
            parts = r["overhead_ms_per_trial"]
            top = max(parts, key=parts.get)
            print(f"{kind}: target missed; biggest part: {top} ({parts[top]:.1f} ms per trial, "
                  f"{parts[top] / 1000 / r['mean_trial_s']:.1%} of the trial)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TRIALS} trials of {QUICK_STEPS} steps (under a minute)")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"default 100 (quick: {QUICK_TRIALS})")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steady timings on a shared machine)")
    parser.add_argument("--postgresql", default=os.environ.get("AUTOML_TEST_POSTGRESQL"),
                        help="also measure this PostgreSQL URL (default: "
                             "$AUTOML_TEST_POSTGRESQL, as .ci/postgres.sh start prints it)")
    parser.add_argument("--label", default=None,
                        help="a word for the result file's name and record (e.g. before/after)")
    args = parser.parse_args()
    storages = STORAGES + (("postgresql",) if args.postgresql else ())
    torch.set_num_threads(args.threads)
    trials = args.trials or (QUICK_TRIALS if args.quick else 100)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="automl-overhead-") as tmp:
        workdir = Path(tmp)
        (workdir / "space.yaml").write_text(SPACE_YAML)
        space = load_space(workdir / "space.yaml", technique_catalog())
        data = load_data(space.data)
        if args.quick:
            n = QUICK_STEPS * space.data["batch_size"]
            data = dataclasses.replace(data, train=Split(data.train.images[:n].contiguous(),
                                                         data.train.labels[:n].contiguous()))
        started = time.perf_counter()
        for kind in storages:  # imports, first kernels, SQLAlchemy: not part of any figure
            run(kind, space, data, 1, device, workdir / "warmup", args.postgresql)
        results = {kind: run(kind, space, data, trials, device, workdir, args.postgresql)
                   for kind in storages}
    print_tables(results)
    report(f"overhead-{args.label}" if args.label else "overhead", {
        "benchmark": "overhead", "label": args.label, "device": device_name(device),
        "quick": args.quick,
        "trials": trials, "epochs": space.epochs, "batch_size": space.data["batch_size"],
        "train_steps_per_epoch": len(data.train) // space.data["batch_size"],
        "target_overhead_share": TARGET,
        "max_overhead_share": max(r["overhead_share"] for r in results.values()),
        "seconds": round(time.perf_counter() - started, 1), "storages": results})


if __name__ == "__main__":
    main()
