"""The fast path: torch.compile, and folders too large for memory (decoded by DataLoader
workers, trained exactly like in memory). No host sync per batch: tests/test_host_sync.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from automl import data as data_module
from automl.data import ImageFiles, load_data
from automl.data import folder as folder_dataset
from automl.discovery import training_manager
from automl.errors import ConfigError
from automl.recipe import Recipe
from automl.trainer import prepare, train


def _recipe(techniques: dict, **data) -> Recipe:
    return Recipe(model="automl_resnet8", data={"dataset": "digits", "batch_size": 32, **data},
                  epochs=1, seed=0, techniques={k: dict(v) for k, v in techniques.items()})


def test_compile_trains_through_a_compiled_wrapper_of_the_same_model(data):
    recipe = _recipe({"optimizer": {}})
    state = prepare(recipe, data, training_manager(recipe), torch.device("cpu"), compile=True)
    assert isinstance(state.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert state.train_model._orig_mod is state.model
    plain = prepare(recipe, data, training_manager(recipe), torch.device("cpu"))
    assert plain.train_model is plain.model


@pytest.fixture(autouse=True)
def _fresh_cache():
    data_module.clear_cache()
    yield
    data_module.clear_cache()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory, data) -> Path:
    """12 real digits per class as PNG files, in train/ and test/ (RGB, 8x8)."""
    root = tmp_path_factory.mktemp("digits")
    for part, split in (("train", data.train), ("test", data.test)):
        for label in range(10):
            images = split.images[split.labels == label][:12]
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            for i, image in enumerate(images):
                grey = image[0].numpy()
                Image.fromarray(np.stack([grey] * 3, -1)).save(folder / f"{i:02d}.png")
    return root


def _config(root: Path, **extra) -> dict:
    return {"dataset": "folder", "path": str(root), "image_size": 8, "batch_size": 16, **extra}


def test_in_memory_false_keeps_files_that_index_like_the_tensor(digit_folder):
    on_disk = load_data(_config(digit_folder, in_memory=False, workers=0))
    in_memory = load_data(_config(digit_folder, in_memory=True))
    assert isinstance(on_disk.train.images, ImageFiles)
    assert not isinstance(in_memory.train.images, ImageFiles)
    assert on_disk.train.images.shape == in_memory.train.images.shape
    assert torch.equal(on_disk.train.labels, in_memory.train.labels)
    idx = torch.tensor([5, 0, 17])
    assert torch.equal(on_disk.train.images[idx], in_memory.train.images[idx])
    assert on_disk.mean == pytest.approx(in_memory.mean)  # fewer images than the stats sample


def test_auto_keeps_a_folder_on_disk_only_beyond_the_memory_limit(digit_folder, monkeypatch):
    assert not isinstance(load_data(_config(digit_folder)).train.images, ImageFiles)
    data_module.clear_cache()
    monkeypatch.setattr(folder_dataset, "IN_MEMORY_LIMIT", 1000)
    assert isinstance(load_data(_config(digit_folder)).train.images, ImageFiles)


@pytest.mark.parametrize("value", ["yes", 1])
def test_in_memory_must_be_a_boolean_or_auto(digit_folder, value):
    with pytest.raises(ConfigError, match="data.in_memory"):
        load_data(_config(digit_folder, in_memory=value))


def test_training_from_worker_processes_matches_training_in_memory(digit_folder):
    """Same seed, same order, same pixels: the loss and val metrics are identical."""
    techniques = {"optimizer": {}, "flip": {"p": 0.5}, "random_crop": {},
                  "fixres": {"train_scale": 0.75, "calibration_batches": 2}}
    histories = []
    for extra in ({"in_memory": True}, {"in_memory": False, "workers": 2}):
        config = _config(digit_folder, **extra)
        recipe = Recipe(model="automl_resnet8", data=config, epochs=2, seed=3,
                        techniques={k: dict(v) for k, v in techniques.items()})
        state = train(recipe, load_data(config), training_manager(recipe),
                      device=torch.device("cpu"))
        histories.append(state.history)
    assert len(histories[0]) == 2
    assert histories[0] == histories[1]
