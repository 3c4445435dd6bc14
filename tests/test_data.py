"""Tests of automl.data on real (embedded or tiny hand-written) data; nothing is downloaded.

Datasets a plugin registers are tested here in-process (registered on the process's discovery
manager for one test), and through an installed plugin in tests/test_dataset_plugin.py.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from automl import data
from automl.cli import cli
from automl.data import (
    DataBundle,
    Split,
    available_datasets,
    check_data,
    download,
    load_data,
    stratified_split,
)
from automl.discovery import dataset_catalog, discovery_manager, technique_catalog
from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.space import load_space

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test sees a cold cache so it exercises the loaders it names."""
    data.clear_cache()
    yield
    data.clear_cache()


def _check_split(split: Split, chans: int, size: int) -> None:
    assert split.images.dtype == torch.uint8
    assert split.images.shape[1:] == (chans, size, size)
    assert split.images.is_contiguous()
    assert split.labels.dtype == torch.int64
    assert split.labels.shape == (len(split.images),)


# --- stratified_split ------------------------------------------------------------------------


def test_stratified_split_partitions_each_class_proportionally():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, cut = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(torch.cat([keep, cut]).sort().values, torch.arange(100))
    assert torch.equal(keep, keep.sort().values) and torch.equal(cut, cut.sort().values)
    assert torch.bincount(labels[cut]).tolist() == [10, 6, 4]


def test_stratified_split_is_seeded():
    labels = torch.arange(200) % 7
    first = stratified_split(labels, 0.3, seed=5)
    again = stratified_split(labels, 0.3, seed=5)
    other = stratified_split(labels, 0.3, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def test_stratified_split_small_classes():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    keep, cut = stratified_split(labels, 0.1, seed=0)
    assert labels[keep].tolist().count(0) == 1  # a lone sample stays on the keep side
    assert sorted(labels[cut].tolist()) == [1, 2]  # every class with >= 2 samples is cut


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split(torch.zeros(4, dtype=torch.int64), 1.0, seed=0)


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_and_sizes():
    bundle = load_data({"dataset": "digits", "batch_size": 64})
    assert isinstance(bundle, DataBundle)
    for split in (bundle.train, bundle.val, bundle.test):
        _check_split(split, 1, 16)
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (10, 1, 16)
    assert bundle.class_names == [str(d) for d in range(10)]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    assert 350 <= len(bundle.test) <= 370
    assert abs(len(bundle.val) / (len(bundle.train) + len(bundle.val)) - 0.1) < 0.01
    assert set(bundle.val.labels.tolist()) == set(range(10))
    assert set(bundle.test.labels.tolist()) == set(range(10))
    assert int(bundle.train.images.max()) == 255 and int(bundle.train.images.min()) == 0


def test_digits_split_is_deterministic_and_seeded():
    first = load_data({"dataset": "digits", "split_seed": 1})
    data.clear_cache()
    again = load_data({"dataset": "digits", "split_seed": 1})
    other = load_data({"dataset": "digits", "split_seed": 2})
    assert torch.equal(first.val.images, again.val.images)
    assert torch.equal(first.val.labels, again.val.labels)
    assert not torch.equal(first.val.images, other.val.images)
    assert torch.equal(first.test.images, other.test.images)  # test never depends on the seed
    assert torch.equal(first.test.labels, other.test.labels)


def test_digits_mean_std_from_train_only():
    bundle = load_data({"dataset": "digits", "val_fraction": 0.25})
    x = bundle.train.images.double() / 255
    assert bundle.mean == pytest.approx([x.mean().item()], abs=1e-9)
    assert bundle.std == pytest.approx([x.std(unbiased=False).item()], abs=1e-9)
    assert 0.1 < bundle.mean[0] < 0.5 and 0.1 < bundle.std[0] < 0.5


def test_load_data_caches_in_process():
    config = {"dataset": "digits", "split_seed": 4}
    assert load_data(config) is load_data(dict(config, batch_size=8))
    assert load_data(config) is not load_data({"dataset": "digits", "split_seed": 5})


# --- config errors ------------------------------------------------------------------------------


def test_unknown_dataset_lists_names():
    with pytest.raises(UserError) as info:
        load_data({"dataset": "imagenet"})
    message = str(info.value)
    assert "imagenet" in message and "\n" not in message
    for name in ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "folder"):
        assert name in message


@pytest.mark.parametrize("config", [
    {},
    {"dataset": "digits", "val_fraction": 0},
    {"dataset": "digits", "val_fraction": 1.5},
    {"dataset": "digits", "split_seed": "1"},
    {"dataset": "digits", "download": "yes"},
    {"dataset": "folder"},
])
def test_bad_config_values(config):
    with pytest.raises(UserError):
        load_data(config)


def test_available_datasets_sorted():
    names = available_datasets()
    assert names == sorted(names)
    assert {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "folder"} <= set(names)


class ToyDatasets:
    """A plugin with two datasets: ``toy`` (40 images of 16x16, 2 classes; loads counted) and
    ``toy_noisy``, which reads a key of its own and requires it."""

    def __init__(self):
        self.loads, self.located = [], []

    def load(self, settings):
        self.loads.append((settings["dataset"], settings.get("noise")))
        images = torch.arange(40 * 3 * 16 * 16, dtype=torch.int64).remainder(251)
        full = Split(images.to(torch.uint8).reshape(40, 3, 16, 16), torch.arange(40) % 2)
        return full, full, ["even", "odd"]

    def locate(self, settings):
        self.located.append(settings["dataset"])

    @hookimpl
    def register_datasets(self, register):
        register("toy", self.load, reads=(), locate=self.locate)
        register("toy_noisy", self.load, reads=("noise",), requires=("noise",))


@pytest.fixture
def add_plugin():
    """``add_plugin(obj, name)`` registers a discovery plugin in this process for one test."""
    pm, added = discovery_manager(), []

    def add(plugin, name):
        pm.register(plugin, name=name)
        added.append(name)
        dataset_catalog.cache_clear()

    yield add
    for name in added:
        pm.unregister(name=name)
    dataset_catalog.cache_clear()


def test_a_plugin_dataset_loads_by_name_once_per_source(add_plugin):
    toy = ToyDatasets()
    add_plugin(toy, "toy_plugin")
    assert {"toy", "toy_noisy", "digits"} <= set(available_datasets())
    bundle = load_data({"dataset": "toy", "split_seed": 1})
    load_data({"dataset": "toy", "split_seed": 2, "batch_size": 8})  # new val cut, same source
    assert toy.loads == [("toy", None)]
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (2, 3, 16)
    assert len(bundle.mean) == len(bundle.std) == 3
    load_data({"dataset": "toy_noisy", "noise": 1})
    load_data({"dataset": "toy_noisy", "noise": 1, "split_seed": 3})
    load_data({"dataset": "toy_noisy", "noise": 2})  # a key it reads: loaded again
    assert toy.loads[1:] == [("toy_noisy", 1), ("toy_noisy", 2)]


def test_automl_train_trains_on_a_plugin_dataset_by_name(add_plugin, tmp_path):
    toy = ToyDatasets()
    add_plugin(toy, "toy_plugin")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: automl_resnet8\ndata: {dataset: toy, batch_size: 16}\nepochs: 1\n"
                      "techniques: {optimizer: {name: sgd, lr: 0.05}}\n")
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "run"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "toy" and metrics["test_evaluations"] == 1
    assert toy.loads == [("toy", None)]


def test_check_data_locates_the_files_without_loading(add_plugin, tmp_path):
    toy = ToyDatasets()
    add_plugin(toy, "toy_plugin")
    check_data({"dataset": "toy"})
    assert toy.located == ["toy"] and toy.loads == []
    check_data({"dataset": "toy_noisy", "noise": 0})  # nothing to locate
    with pytest.raises(UserError, match="data.val_fraction: expected a number in"):
        check_data({"dataset": "toy", "val_fraction": 2})
    with pytest.raises(UserError, match="IDX files .* not found"):
        check_data({"dataset": "mnist", "data_dir": str(tmp_path)})
    with pytest.raises(UserError, match="not a directory"):
        check_data({"dataset": "folder", "path": str(tmp_path / "nope")})


def test_a_plugin_dataset_key_is_valid_in_a_space_and_required_where_declared(add_plugin,
                                                                              tmp_path):
    add_plugin(ToyDatasets(), "toy_plugin")
    space = tmp_path / "s.yaml"
    space.write_text("data: {dataset: toy_noisy, noise: 3}\ntechniques: {}\n")
    assert load_space(space, technique_catalog()).data == {"dataset": "toy_noisy",
                                                           "batch_size": 64, "noise": 3}
    space.write_text("data: {dataset: toy_noisy}\ntechniques: {}\n")
    with pytest.raises(UserError) as info:
        load_space(space, technique_catalog())
    assert str(info.value) == f"{space}:1: data.noise: required for dataset 'toy_noisy'"
    with pytest.raises(UserError, match="data.noise: required for dataset 'toy_noisy'"):
        load_data({"dataset": "toy_noisy"})


def test_a_dataset_registered_twice_names_both_plugins(add_plugin):
    add_plugin(ToyDatasets(), "first")
    add_plugin(ToyDatasets(), "second")
    with pytest.raises(UserError, match="dataset 'toy' is registered twice: by plugin 'first' "
                                        "and by plugin 'second'"):
        dataset_catalog()


def test_a_loader_that_returns_the_wrong_thing_names_its_plugin(add_plugin):
    class Wrong:
        @hookimpl
        def register_datasets(self, register):
            register("wrong", lambda settings: (torch.zeros(4, 1, 2, 2), None, ["a"]))

    add_plugin(Wrong(), "wrong_plugin")
    with pytest.raises(UserError, match="dataset 'wrong' \\(plugin 'wrong_plugin'\\): its loader "
                                        "returned something other than"):
        load_data({"dataset": "wrong"})


def test_a_bad_dataset_registration_names_the_plugin(add_plugin):
    class Bad:
        @hookimpl
        def register_datasets(self, register):
            register("Bad Name", print)

    add_plugin(Bad(), "bad")
    with pytest.raises(UserError, match="plugin 'bad' registered dataset 'Bad Name'"):
        dataset_catalog()


def test_split_validates_layout():
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --- Fashion-MNIST / MNIST -------------------------------------------------------------------


@pytest.mark.skipif(not DEBIAN_FASHION.exists(),
                    reason=f"{DEBIAN_FASHION} absent (apt package dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files(tmp_path):
    bundle = load_data({"dataset": "fashion_mnist", "data_dir": str(tmp_path)})
    assert len(bundle.train) + len(bundle.val) == 60000
    assert len(bundle.val) == 6000
    assert len(bundle.test) == 10000
    for split in (bundle.train, bundle.val, bundle.test):
        _check_split(split, 1, 28)
    assert bundle.class_names[0] == "T-shirt/top" and bundle.class_names[9] == "Ankle boot"
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    assert torch.bincount(bundle.val.labels).tolist() == [600] * 10
    assert 0.2 < bundle.mean[0] < 0.4 and 0.25 < bundle.std[0] < 0.45


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write the IDX format: 0, 0, dtype code 0x08 (ubyte), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _tiny_idx_set(directory: Path, gz: bool, n_train: int = 30, n_test: int = 10
                  ) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8)[::-1] % 10,
    }
    for stem, array in arrays.items():
        _write_idx(directory / (stem + suffix), array)
    return arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]


def test_fashion_mnist_tiny_idx_via_data_dir(tmp_path):
    test_images, test_labels = _tiny_idx_set(tmp_path / "fashion-mnist", gz=True)
    bundle = load_data({"dataset": "fashion_mnist", "data_dir": str(tmp_path)})
    assert len(bundle.train) + len(bundle.val) == 30
    assert set(bundle.val.labels.tolist()) == set(range(10))
    assert torch.equal(bundle.test.images[:, 0], torch.from_numpy(test_images))
    assert torch.equal(bundle.test.labels, torch.from_numpy(test_labels.astype(np.int64)))
    assert bundle.class_names[8] == "Bag"


def test_mnist_torchvision_layout_plain_files(tmp_path):
    _tiny_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    bundle = load_data({"dataset": "mnist", "data_dir": str(tmp_path)})
    assert bundle.class_names == [str(d) for d in range(10)]
    _check_split(bundle.test, 1, 28)


def test_mnist_missing_files_mentions_download(tmp_path):
    with pytest.raises(UserError) as info:
        load_data({"dataset": "mnist", "data_dir": str(tmp_path)})
    message = str(info.value)
    assert "download: true" in message and str(tmp_path) in message and "--data-dir" in message


def test_mnist_download_flow_reads_own_files(tmp_path, monkeypatch):
    fetched = []

    def fake_download(class_name, data_dir, dataset):
        fetched.append(class_name)
        _tiny_idx_set(data_dir / class_name / "raw", gz=True)

    monkeypatch.setattr(download, "torchvision_download", fake_download)
    bundle = load_data({"dataset": "mnist", "data_dir": str(tmp_path), "download": True})
    assert fetched == ["MNIST"] and len(bundle.test) == 10


def test_corrupt_idx_file_is_user_error(tmp_path):
    _tiny_idx_set(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_data({"dataset": "mnist", "data_dir": str(tmp_path)})


# --- CIFAR ------------------------------------------------------------------------------------


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path) -> np.ndarray:
    """Five train batches and a test batch with bytes keys, as the py2 originals load."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels":
                                           [(i * 4 + j) % 10 for j in range(4)],
                                           b"data": _cifar_rows(4, i), b"filenames": []})
    test_rows = _cifar_rows(10, 99)
    _dump(folder / "test_batch", {b"labels": list(range(10)), b"data": test_rows})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return test_rows


def test_cifar10_pickle_batches(tmp_path):
    test_rows = _write_cifar10(tmp_path)
    bundle = load_data({"dataset": "cifar10", "data_dir": str(tmp_path)})
    for split in (bundle.train, bundle.val, bundle.test):
        _check_split(split, 3, 32)
    assert len(bundle.train) + len(bundle.val) == 20 and len(bundle.test) == 10
    assert bundle.class_names[0] == "airplane" and bundle.num_classes == 10
    first = bundle.test.images[0]
    assert torch.equal(first[0].flatten(), torch.from_numpy(test_rows[0, :1024]))  # R plane
    assert torch.equal(first[2, 31], torch.from_numpy(test_rows[0, -32:]))  # last row of B
    assert len(bundle.mean) == 3


def test_cifar100_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "train", {"fine_labels": [i % 5 for i in range(15)],
                             "coarse_labels": [0] * 15, "data": _cifar_rows(15, 1)})
    _dump(folder / "test", {"fine_labels": [0, 1, 2], "coarse_labels": [0] * 3,
                            "data": _cifar_rows(3, 2)})
    _dump(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)],
                            "coarse_label_names": [f"super{i}" for i in range(20)]})
    bundle = load_data({"dataset": "cifar100", "data_dir": str(tmp_path)})
    assert bundle.num_classes == 100 and bundle.class_names[42] == "class42"
    assert len(bundle.train) + len(bundle.val) == 15 and len(bundle.test) == 3
    assert bundle.test.labels.tolist() == [0, 1, 2]


class _Payload:
    """Unpickling this runs a shell command: what a crafted dataset file could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"labels": [0], b"data":
                                                              _Payload(marker)})
    with pytest.raises(UserError, match=r"data_batch_3: UnpicklingError: refused to load "
                                        r"posix.system"):
        load_data({"dataset": "cifar10", "data_dir": str(tmp_path)})
    assert not marker.exists()


def test_cifar_missing_files_mentions_download(tmp_path):
    with pytest.raises(UserError, match="download: true") as info:
        load_data({"dataset": "cifar10", "data_dir": str(tmp_path)})
    assert "cifar-10-batches-py" in str(info.value)


# --- folder -----------------------------------------------------------------------------------


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10),
         mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)


def test_folder_layout_train_test(tmp_path):
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        _png(tmp_path / "train" / "cat" / f"{i}.png", (255, 0, 0), mode=mode)
        _png(tmp_path / "train" / "dog" / f"{i}.png", (0, 0, 255), size=(20, 7))
    _png(tmp_path / "train" / "dog" / "3.png", (0, 0, 255))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    _png(tmp_path / "test" / "cat" / "a.png", (255, 0, 0))
    _png(tmp_path / "test" / "dog" / "a.png", (0, 0, 255))
    bundle = load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 8})
    assert bundle.class_names == ["cat", "dog"]
    assert len(bundle.train) + len(bundle.val) == 7 and len(bundle.test) == 2
    for split in (bundle.train, bundle.val, bundle.test):
        _check_split(split, 3, 8)
    assert bundle.test.labels.tolist() == [0, 1]
    red = bundle.test.images[0]
    assert red[0].min() == 255 and red[1:].max() == 0


def test_folder_layout_class_dirs_only(tmp_path):
    for name in ("a", "b", "c"):
        for i in range(5):
            _png(tmp_path / name / f"{i}.jpg", (i * 40, 10, 200))
    bundle = load_data({"dataset": "folder", "path": str(tmp_path)})
    assert bundle.class_names == ["a", "b", "c"] and bundle.image_size == 32
    assert len(bundle.test) == 3 and len(bundle.train) + len(bundle.val) == 12
    assert set(bundle.val.labels.tolist()) == {0, 1, 2}
    again = load_data({"dataset": "folder", "path": str(tmp_path), "split_seed": 9})
    assert torch.equal(bundle.test.images, again.test.images)


def test_folder_mismatched_test_classes(tmp_path):
    for cls in ("cat", "dog"):
        _png(tmp_path / "train" / cls / "0.png", (0, 0, 0))
    for cls in ("cat", "bird"):
        _png(tmp_path / "test" / cls / "0.png", (0, 0, 0))
    with pytest.raises(UserError) as info:
        load_data({"dataset": "folder", "path": str(tmp_path)})
    assert "bird" in str(info.value) and "dog" in str(info.value)


def test_folder_without_images(tmp_path):
    with pytest.raises(UserError, match="no class folders"):
        load_data({"dataset": "folder", "path": str(tmp_path)})
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    with pytest.raises(UserError, match="no images") as info:
        load_data({"dataset": "folder", "path": str(tmp_path)})
    assert str(tmp_path) in str(info.value)


def test_folder_path_must_be_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_data({"dataset": "folder", "path": str(tmp_path / "nope")})


def test_folder_unreadable_image(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", (0, 0, 0))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"broken\.png"):
        load_data({"dataset": "folder", "path": str(tmp_path)})


# --- train_fraction and with_validation_in_train ---------------------------------------------


def test_train_fraction_keeps_a_seeded_stratified_part_of_the_training_split():
    full = load_data({"dataset": "digits"})
    part = load_data({"dataset": "digits", "train_fraction": 0.25})
    # Each class drops 75% of its training images, rounded half up (stratified_split).
    expected = [n - int(n * 0.75 + 0.5) for n in torch.bincount(full.train.labels).tolist()]
    assert torch.bincount(part.train.labels).tolist() == expected
    rows = {bytes(img.numpy().tobytes()) for img in full.train.images}
    assert all(bytes(img.numpy().tobytes()) in rows for img in part.train.images)
    data.clear_cache()
    again = load_data({"dataset": "digits", "train_fraction": 0.25})
    other = load_data({"dataset": "digits", "train_fraction": 0.25, "split_seed": 1})
    assert torch.equal(part.train.images, again.train.images)
    assert not torch.equal(part.train.labels, other.train.labels)


def test_train_fraction_leaves_validation_and_test_unchanged():
    full = load_data({"dataset": "digits"})
    for fraction in (0.1, 0.5, 1):
        part = load_data({"dataset": "digits", "train_fraction": fraction})
        for name in ("val", "test"):
            assert torch.equal(getattr(part, name).images, getattr(full, name).images)
            assert torch.equal(getattr(part, name).labels, getattr(full, name).labels)
    assert load_data({"dataset": "digits", "train_fraction": 1}) is full  # 1 is the default


def test_train_fraction_keeps_one_image_per_class_and_stats_come_from_the_part():
    tiny = load_data({"dataset": "digits", "train_fraction": 0.001})
    assert torch.bincount(tiny.train.labels).tolist() == [1] * 10
    part = load_data({"dataset": "digits", "train_fraction": 0.3})
    x = part.train.images.double() / 255
    assert part.mean == pytest.approx([x.mean().item()], abs=1e-9)
    assert part.std == pytest.approx([x.std(unbiased=False).item()], abs=1e-9)
    assert part.mean != load_data({"dataset": "digits"}).mean


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "0.5", True, None])
def test_bad_train_fraction_is_one_line_naming_the_key(value, tmp_path):
    with pytest.raises(UserError) as info:
        load_data({"dataset": "digits", "train_fraction": value})
    message = f"data.train_fraction: expected a number in (0, 1], got {value!r}"
    assert str(info.value) == message  # the same words as in a space file, checked in one place
    space = tmp_path / "s.yaml"
    text = "null" if value is None else repr(value) if isinstance(value, str) else str(value)
    space.write_text(f"model: automl_resnet8\ndata: {{dataset: digits, train_fraction: {text}}}\n"
                     "epochs: 1\ntechniques: {}\n")
    with pytest.raises(UserError) as info:
        load_space(space, technique_catalog())
    assert str(info.value) == f"{space}:2: {message}"


def test_with_validation_in_train_joins_val_into_train():
    part = load_data({"dataset": "digits", "train_fraction": 0.5})
    joined = data.with_validation_in_train(part)
    assert len(joined.train) == len(part.train) + len(part.val)
    assert torch.equal(joined.train.images, torch.cat([part.train.images, part.val.images]))
    assert joined.val is part.val and joined.test is part.test
    x = joined.train.images.double() / 255
    assert joined.mean == pytest.approx([x.mean().item()], abs=1e-9)
    assert load_data({"dataset": "digits", "train_fraction": 0.5}) is part  # cache untouched


def test_with_validation_in_train_on_disk_images(tmp_path):
    for name, color in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        for i in range(6):
            _png(tmp_path / name / f"{i}.png", color)
    bundle = load_data({"dataset": "folder", "path": str(tmp_path), "image_size": 4,
                        "in_memory": False, "workers": 0, "val_fraction": 0.4})
    joined = data.with_validation_in_train(bundle)
    assert isinstance(joined.train.images, data.ImageFiles)
    assert joined.train.images.paths == bundle.train.images.paths + bundle.val.images.paths
    assert joined.train.labels.tolist() == bundle.train.labels.tolist() + \
        bundle.val.labels.tolist()
    _check_split(Split(joined.train.images[:].contiguous(), joined.train.labels), 3, 4)
