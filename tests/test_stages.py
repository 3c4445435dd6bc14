"""Stages (automl.stages): built once, reused by every training that asks, keyed by what they
depend on, blind to val and test, never half-used, and built once across processes.

Real objects: the digits data, real TrainStates, real files, real processes (fork).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch

from automl.data.splits import subset
from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.stages import (
    ARTIFACT,
    STAGE_SECONDS,
    Stage,
    artifact,
    artifact_folder,
    artifact_path,
    stage_key,
)
from automl.state import TrainState

CPU = torch.device("cpu")
DATA_CONFIG = {"dataset": "digits", "batch_size": 32}


def _state(data, stage_dir: Path, recipe: Recipe | None = None) -> TrainState:
    """A training's state as a hook sees it, before anything is built."""
    recipe = recipe or Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=1)
    return TrainState(recipe=recipe, data=data, device=CPU, epochs=1, batch_size=32,
                      batches_per_epoch=1, generator=torch.Generator(), stage_dir=stage_dir)


def counted_run(context) -> dict:
    """A stage that says what it was handed and counts its runs in a file."""
    with open(context.recipe["count_file"], "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return {"sum": context.data.train.images.float().sum(), "n_train": len(context.data.train),
            "n_val": len(context.data.val), "n_test": len(context.data.test),
            "unlabelled": context.unlabelled is not None}


def _counted(tmp_path: Path, **recipe) -> Stage:
    return Stage("probe.stats", {"count_file": str(tmp_path / "runs.txt"), **recipe}, counted_run)


def _runs(tmp_path: Path) -> int:
    path = tmp_path / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_an_artifact_is_built_once_and_reused_by_the_next_training(data, tmp_path):
    stage = _counted(tmp_path)
    first = _state(data, tmp_path / "stages")
    built = artifact(first, stage)
    second = _state(data, tmp_path / "stages")  # another trial of the same study
    again = artifact(second, stage)

    assert _runs(tmp_path) == 1
    assert torch.equal(built["sum"], again["sum"])
    assert built["sum"] == data.train.images.float().sum()
    assert artifact_path(second, stage) == tmp_path / "stages" / \
        f"probe.stats-{stage_key(stage, second)[:20]}" / ARTIFACT
    assert set(first.extras[STAGE_SECONDS]) == {"probe.stats"}  # the time is recorded
    assert (artifact_folder(first, stage) / "stage.json").is_file()


def test_a_stage_is_handed_the_training_split_without_val_and_test(data, tmp_path):
    got = artifact(_state(data, tmp_path / "stages"), _counted(tmp_path))
    assert got["n_train"] == len(data.train) > 0
    assert got["n_val"] == 0 and got["n_test"] == 0
    assert len(data.val) > 0 and len(data.test) > 0  # the trial's own data is untouched


class EvalRecorder:
    @hookimpl
    def on_eval_start(self, state, split, prefix):
        raise AssertionError(f"a stage evaluated {prefix}")


def trained_run(context) -> dict:
    trained = context.train(extra_plugins=[EvalRecorder()], max_steps=2)
    return {"history": trained.state.history, "steps": trained.state.step,
            "n_val": len(trained.state.data.val)}


def test_a_stage_trains_with_the_normal_trainer_and_evaluates_nothing(data, tmp_path):
    recipe = Recipe(model="automl_resnet8", data=dict(DATA_CONFIG), epochs=1,
                    techniques={"optimizer": {}})
    got = artifact(_state(data, tmp_path), Stage("probe.train", recipe, trained_run))
    assert got["steps"] == 2 and got["n_val"] == 0
    assert len(got["history"]) == 1 and "train/loss" in got["history"][0]
    assert not [k for k in got["history"][0] if k.startswith(("val/", "test/"))]


def test_the_key_changes_with_the_stage_recipe_and_the_training_data(data, tmp_path):
    state = _state(data, tmp_path)
    key = stage_key(_counted(tmp_path), state)
    assert stage_key(_counted(tmp_path), _state(data, tmp_path / "other")) == key
    assert stage_key(_counted(tmp_path, epochs=2), state) != key
    assert stage_key(Stage("probe.other", _counted(tmp_path).recipe, counted_run), state) != key
    fewer = dataclasses.replace(data, train=subset(data.train, torch.arange(len(data.train) - 1)))
    assert stage_key(_counted(tmp_path), _state(fewer, tmp_path)) != key
    relabelled = dataclasses.replace(
        data, train=dataclasses.replace(data.train, labels=data.train.labels.roll(1)))
    assert stage_key(_counted(tmp_path), _state(relabelled, tmp_path)) != key
    other_settings = Recipe(model="automl_resnet8", epochs=1,
                            data={**DATA_CONFIG, "val_fraction": 0.2})
    assert stage_key(_counted(tmp_path), _state(data, tmp_path, other_settings)) != key
    where_files_live = Recipe(model="automl_resnet8", epochs=1,
                              data={**DATA_CONFIG, "data_dir": "/elsewhere"})
    assert stage_key(_counted(tmp_path), _state(data, tmp_path, where_files_live)) == key


def test_a_leftover_temp_file_and_an_unreadable_artifact_are_built_again(data, tmp_path):
    state, stage = _state(data, tmp_path / "stages"), _counted(tmp_path)
    folder = artifact_folder(state, stage)
    folder.mkdir(parents=True)
    (folder / f".{ARTIFACT}.tmp999").write_bytes(b"half a pickle")  # a killed writer's
    (folder / "lock").touch()
    assert artifact(state, stage)["n_train"] == len(data.train)
    assert _runs(tmp_path) == 1

    (folder / ARTIFACT).write_bytes((folder / ARTIFACT).read_bytes()[:100])  # truncated
    assert artifact(state, stage)["n_train"] == len(data.train)
    assert _runs(tmp_path) == 2


def killed_run(context) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)  # killed halfway: holds the lock, wrote nothing


def _ask(data, stage_dir: Path, stage: Stage, results) -> None:
    got = artifact(_state(data, stage_dir), stage)
    results.put((got["n_train"], float(got["sum"])))


@pytest.fixture
def fork():
    return multiprocessing.get_context("fork")


def test_a_stage_killed_halfway_is_built_again_by_the_next_request(data, tmp_path, fork):
    stage_dir = tmp_path / "stages"
    killed = Stage("probe.stats", _counted(tmp_path).recipe, killed_run)  # same key
    process = fork.Process(target=_ask, args=(data, stage_dir, killed, fork.Queue()))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    state = _state(data, stage_dir)
    assert (artifact_folder(state, killed) / "lock").exists()
    assert not (artifact_folder(state, killed) / ARTIFACT).exists()

    assert artifact(state, _counted(tmp_path))["n_train"] == len(data.train)
    assert _runs(tmp_path) == 1


def slow_counted_run(context) -> dict:
    import time

    time.sleep(1.0)  # long enough for the other process to ask meanwhile
    return counted_run(context)


def test_two_processes_asking_at_once_build_the_artifact_once(data, tmp_path, fork):
    stage = Stage("probe.stats", _counted(tmp_path).recipe, slow_counted_run)
    results = fork.Queue()
    processes = [fork.Process(target=_ask, args=(data, tmp_path / "stages", stage, results))
                 for _ in range(2)]
    for process in processes:
        process.start()
    got = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert _runs(tmp_path) == 1
    assert got[0] == got[1] == (len(data.train), float(data.train.images.float().sum()))


def test_an_unlabelled_split_reaches_the_stage_and_its_key(data, tmp_path):
    from automl.data.splits import without_labels

    extra = without_labels(subset(data.val, torch.arange(10)))
    semi = dataclasses.replace(data, unlabelled=extra)
    state = _state(semi, tmp_path)
    assert stage_key(_counted(tmp_path), state) != stage_key(_counted(tmp_path),
                                                             _state(data, tmp_path))
    assert artifact(state, _counted(tmp_path))["unlabelled"] is True


def test_a_stage_name_names_its_technique():
    with pytest.raises(ValueError, match="TECHNIQUE.WHAT"):
        Stage("teacher", {}, counted_run)
