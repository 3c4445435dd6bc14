"""Datasets as uint8 images: registry, loaders, seeded val split, normalization stats.

A dataset that fits is held fully in memory as ``uint8`` (N, C, H, W) so a search process loads it
once and each trial only indexes and normalizes batches (on the GPU when there is one). An image
folder too large for that stays on disk as :class:`ImageFiles`: DataLoader workers decode and
resize each batch, and augmentation still runs batched on the device. The validation split is a
seeded stratified cut from the official training set; the official test split is never
touched by a search. ``train_fraction`` trains on a seeded stratified part of what is left after
that cut (the validation split does not depend on it); :func:`with_validation_in_train` adds the
validation images to the training split for a final model.

Only the downloaders of torchvision are used; the files are read by the small readers below, so
results do not depend on torchvision's dataset classes.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl.errors import ConfigError, UserError

__all__ = [
    "DATASETS",
    "DataBundle",
    "ImageFiles",
    "Split",
    "available_datasets",
    "clear_cache",
    "load_data",
    "register_dataset",
    "stats_sample",
    "stratified_split",
    "with_fewer_samples",
    "with_validation_in_train",
]

DEFAULT_DATA_DIR = "~/.cache/automl/data"
FIXED_TEST_FRACTION = 0.2  # test cut for datasets without an official test split
FIXED_TEST_SEED = 0  # independent of ``split_seed`` so the test set never changes
IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded images a folder may hold in memory (`in_memory: auto`)
STATS_SAMPLE = 2048  # images of an on-disk split that normalization statistics are estimated on
DOWNLOAD_HINT = "set `download: true` in the data config or pass --data-dir pointing at the files"


class ImageFiles:
    """Images on disk that index like a uint8 (N, 3, size, size) tensor, decoding on demand.

    ``images[idx]`` decodes a batch (threads; PIL releases the GIL). The trainer instead feeds
    ``dataset()`` to a DataLoader with ``workers`` processes, so decoding overlaps training.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, paths: Sequence[Path], size: int, workers: int):
        self.paths, self.size, self.workers = tuple(paths), size, workers

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx) -> torch.Tensor:
        """Decode the images ``idx`` selects (threads: PIL releases the GIL)."""
        rows = torch.arange(len(self.paths))[idx].reshape(-1).tolist()
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(lambda i: _read_image(self.paths[i], self.size), rows))
        if not arrays:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def subset(self, idx: torch.Tensor) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in idx.tolist()], self.size, self.workers)

    def dataset(self, labels: torch.Tensor) -> torch.utils.data.Dataset:
        """(image, label) pairs a DataLoader with a batch sampler of index lists can read."""
        return _DecodedImages(self.paths, self.size, labels)


class _DecodedImages(torch.utils.data.Dataset):
    def __init__(self, paths: tuple[Path, ...], size: int, labels: torch.Tensor):
        self.paths, self.size, self.labels = paths, size, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(_read_image(self.paths[i], self.size)), self.labels[i]


@dataclass(frozen=True)
class Split:
    """One set of images with labels; validated so every consumer can rely on the layout."""

    images: torch.Tensor | ImageFiles  # uint8, shape (N, C, H, W), contiguous, CPU
    labels: torch.Tensor  # int64, shape (N,)

    def __post_init__(self) -> None:
        img, lab = self.images, self.labels
        if isinstance(img, ImageFiles):
            if lab.dtype != torch.int64 or lab.shape != (len(img),):
                raise ValueError(f"Split.labels must be int64 ({len(img)},)")
            return
        if img.dtype != torch.uint8 or img.ndim != 4:
            raise ValueError(f"Split.images must be uint8 (N, C, H, W), got {img.dtype} "
                             f"{tuple(img.shape)}")
        if lab.dtype != torch.int64 or lab.ndim != 1 or len(lab) != len(img):
            raise ValueError(f"Split.labels must be int64 (N,) with N={len(img)}, got "
                             f"{lab.dtype} {tuple(lab.shape)}")
        if img.device.type != "cpu" or lab.device.type != "cpu" or not img.is_contiguous():
            raise ValueError("Split tensors must be contiguous CPU tensors")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataBundle:
    """Everything a trial needs about its data; shared (cached) within a process, do not mutate."""

    name: str
    train: Split  # what the search trains on (``train_fraction`` of the non-validation images)
    val: Split  # seeded stratified cut from the training set
    test: Split  # the official test split (never used by a search)
    num_classes: int
    in_chans: int
    image_size: int  # H (== W) of the stored images
    mean: tuple[float, ...]  # per-channel mean of train.images / 255 (the images trained on)
    std: tuple[float, ...]  # per-channel std of train.images / 255
    class_names: list[str]


Loader = Callable[[dict], tuple[Split, Split, list[str]]]

DATASETS: dict[str, Loader] = {}
_CACHE_KEYS: dict[str, tuple[str, ...] | None] = {}
_SOURCES: dict[tuple, tuple[Split, Split, list[str]]] = {}
_BUNDLES: dict[tuple, DataBundle] = {}
_SPLIT_KEYS = ("val_fraction", "split_seed", "train_fraction", "download")


def register_dataset(name: str, *, config_keys: Sequence[str] | None = None
                     ) -> Callable[[Loader], Loader]:
    """Register ``fn(config) -> (train_full, test, class_names)`` under ``name``.

    ``config_keys`` names the data-config keys the loader reads, so the in-process cache reloads
    only when one of them changes; ``None`` (safe default for plugins) keys on all of them.
    """

    def decorator(fn: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        _CACHE_KEYS[name] = None if config_keys is None else tuple(config_keys)
        return fn

    return decorator


def available_datasets() -> list[str]:
    """Sorted registered names, for help texts and error messages."""
    return sorted(DATASETS)


def clear_cache() -> None:
    """Forget loaded datasets (tests, or a long-lived process that wants memory back)."""
    _SOURCES.clear()
    _BUNDLES.clear()


def load_data(config: Mapping[str, Any]) -> DataBundle:
    """Load (once per process) the dataset described by the ``data:`` config mapping."""
    cfg = _normalize_config(config)
    source_key = _source_key(cfg)
    bundle_key = (source_key, cfg["val_fraction"], cfg["split_seed"], cfg["train_fraction"])
    if bundle_key not in _BUNDLES:
        if source_key not in _SOURCES:
            _SOURCES[source_key] = DATASETS[cfg["dataset"]](cfg)
        train_full, test, names = _SOURCES[source_key]
        _BUNDLES[bundle_key] = _build_bundle(
            cfg["dataset"], train_full, test, names, cfg["val_fraction"], cfg["split_seed"],
            cfg["train_fraction"])
    return _BUNDLES[bundle_key]


def with_fewer_samples(data: DataBundle, classes: Sequence[int], keep: float,
                       seed: int = 0) -> DataBundle:
    """``data`` with only a ``keep`` fraction (at least one) of the training images of
    ``classes``: an imbalanced (long-tailed) variant; validation and test stay as they are."""
    generator = torch.Generator().manual_seed(seed)
    labels = data.train.labels
    kept = torch.ones(len(labels), dtype=torch.bool)
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        kept[idx[max(1, round(len(idx) * keep)):]] = False
    train = _subset(data.train, kept.nonzero().flatten())
    mean, std = _channel_stats(stats_sample(train))
    return replace(data, train=train, mean=mean, std=std)


def with_validation_in_train(data: DataBundle) -> DataBundle:
    """``data`` whose training split is train + val (for a final model only): ``val`` is still
    there to report on, but its scores are then not held out. Normalization statistics are
    computed again on the images now trained on; test stays as it is."""
    train = _concat(data.train, data.val)
    mean, std = _channel_stats(stats_sample(train))
    return replace(data, train=train, mean=mean, std=std)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sorted ``(keep_idx, cut_idx)`` cutting ``fraction`` of every class, seeded.

    Each class with at least two samples gives at least one to each side, so small classes still
    appear in the cut; a class with a single sample stays in ``keep``.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = labels.cpu()
    empty = torch.empty(0, dtype=torch.int64)
    if len(labels) == 0:
        return empty, empty.clone()
    gen = torch.Generator().manual_seed(seed)
    by_class = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, sorted=True, return_counts=True)[1].tolist()
    keep, cut = [empty], [empty]
    for idx in torch.split(by_class, counts):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_cut = _cut_count(len(idx), fraction)
        cut.append(idx[:n_cut])
        keep.append(idx[n_cut:])
    return torch.cat(keep).sort().values, torch.cat(cut).sort().values


def _cut_count(n: int, fraction: float) -> int:
    """Proportional share of one class, rounded half up, leaving both sides non-empty."""
    if n < 2:
        return 0
    return min(max(int(n * fraction + 0.5), 1), n - 1)


# --- config and bundle assembly -------------------------------------------------------------


def _normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the shared keys and fill defaults, so loaders and cache keys see one form."""
    if not isinstance(config, Mapping):
        raise ConfigError("must be a mapping with at least a `dataset` key", key="data")
    names = ", ".join(available_datasets())
    name = config.get("dataset")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"required, one of: {names}", key="data.dataset")
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available: {names}", key="data.dataset")
    cfg = dict(config)
    data_dir = cfg.get("data_dir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str | os.PathLike):
        raise ConfigError(f"must be a path, got {data_dir!r}", key="data.data_dir")
    cfg["data_dir"] = str(Path(data_dir).expanduser().resolve())
    cfg["download"] = _bool_key(cfg, "download", False)
    cfg["val_fraction"] = _fraction_key(cfg, "val_fraction", 0.1)
    cfg["train_fraction"] = _fraction_key(cfg, "train_fraction", 1.0, include_one=True)
    cfg["split_seed"] = _int_key(cfg, "split_seed", 0, minimum=0)
    return cfg


def _bool_key(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", key=f"data.{key}")
    return value


def _fraction_key(cfg: Mapping[str, Any], key: str, default: float, *,
                  include_one: bool = False) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < 1 or (include_one and value == 1)):
        interval = "(0, 1]" if include_one else "(0, 1)"
        raise ConfigError(f"must be a number in {interval}, got {value!r}", key=f"data.{key}")
    return float(value)


def _int_key(cfg: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=f"data.{key}")
    return value


def _source_key(cfg: Mapping[str, Any]) -> tuple:
    """Cache key of the loaded (unsplit) data: the dataset plus the config keys it reads."""
    name = cfg["dataset"]
    keys = _CACHE_KEYS.get(name)
    if keys is None:
        keys = tuple(sorted(k for k in cfg if k not in (*_SPLIT_KEYS, "dataset")))
    return (name, *((k, repr(cfg.get(k))) for k in keys))


def _build_bundle(name: str, train_full: Split, test: Split, class_names: list[str],
                  val_fraction: float, split_seed: int, train_fraction: float = 1.0
                  ) -> DataBundle:
    """Cut val from the full training set, keep ``train_fraction`` of the rest (stratified,
    seeded, at least one image per class) and compute normalization stats on that part only."""
    _check_consistent(name, train_full, test, class_names)
    keep, cut = stratified_split(train_full.labels, val_fraction, split_seed)
    train, val = _subset(train_full, keep), _subset(train_full, cut)
    if len(val) == 0 or len(test) == 0:
        raise UserError(f"dataset {name}: too few images to cut validation and test sets "
                        f"({len(train_full)} training, {len(test)} test); add images per class")
    if train_fraction < 1.0:
        # Dropping 1 - fraction keeps the kept side non-empty for every class.
        train = _subset(train, stratified_split(train.labels, 1.0 - train_fraction,
                                                split_seed)[0])
    mean, std = _channel_stats(stats_sample(train))
    return DataBundle(name=name, train=train, val=val, test=test,
                      num_classes=len(class_names), in_chans=train.images.shape[1],
                      image_size=train.images.shape[-1], mean=mean, std=std,
                      class_names=list(class_names))


def _check_consistent(name: str, train: Split, test: Split, class_names: list[str]) -> None:
    """Catch loader bugs and corrupt label files before they surface as odd training errors."""
    if len(train) < 2:
        raise UserError(f"dataset {name}: the training set has {len(train)} images, need >= 2")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"dataset {name}: train images {tuple(train.images.shape[1:])} and "
                         f"test images {tuple(test.images.shape[1:])} differ in shape")
    if train.images.shape[-1] != train.images.shape[-2]:
        raise ValueError(f"dataset {name}: images must be square, got "
                         f"{tuple(train.images.shape[-2:])}")
    for part, split in (("train", train), ("test", test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            raise UserError(f"dataset {name}: {part} labels outside 0..{len(class_names) - 1} "
                            f"(corrupt label file?)")


def _subset(split: Split, idx: torch.Tensor) -> Split:
    if isinstance(split.images, ImageFiles):
        return Split(split.images.subset(idx), split.labels[idx].contiguous())
    return Split(split.images[idx].contiguous(), split.labels[idx].contiguous())


def _concat(first: Split, second: Split) -> Split:
    if isinstance(first.images, ImageFiles) or isinstance(second.images, ImageFiles):
        if not (isinstance(first.images, ImageFiles) and isinstance(second.images, ImageFiles)):
            raise ValueError("cannot join an in-memory split with an on-disk one")
        images = ImageFiles(first.images.paths + second.images.paths, first.images.size,
                            first.images.workers)
        return Split(images, torch.cat([first.labels, second.labels]))
    return Split(torch.cat([first.images, second.images]).contiguous(),
                 torch.cat([first.labels, second.labels]))


def stats_sample(split: Split) -> torch.Tensor:
    """The images statistics are computed on: all of an in-memory split, else a seeded sample
    of :data:`STATS_SAMPLE` images (decoding a large folder twice would cost minutes)."""
    if not isinstance(split.images, ImageFiles):
        return split.images
    count = min(STATS_SAMPLE, len(split))
    return split.images[torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
                        [:count].sort().values]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images / 255``, in float64 chunks."""
    n, c, h, w = images.shape
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    chunk = max(1, (1 << 22) // (c * h * w))  # bounds the float64 copy to ~32 MiB
    for start in range(0, n, chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _fixed_test_cut(full: Split) -> tuple[Split, Split]:
    """Stable stratified test set for datasets that ship without one."""
    keep, cut = stratified_split(full.labels, FIXED_TEST_FRACTION, FIXED_TEST_SEED)
    return _subset(full, keep), _subset(full, cut)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _torchvision_download(class_name: str, data_dir: Path, dataset: str) -> None:
    """Use torchvision only as a downloader; the files are then read by our own readers."""
    try:
        import torchvision.datasets as tv_datasets

        data_dir.mkdir(parents=True, exist_ok=True)
        getattr(tv_datasets, class_name)(root=str(data_dir), train=True, download=True)
    except Exception as exc:  # network, disk and checksum failures come in many types
        raise UserError(f"{dataset}: download to {data_dir} failed: {_one_line(exc)}") from exc


# --- digits (scikit-learn, embedded) --------------------------------------------------------


@register_dataset("digits", config_keys=())
def _load_digits(config: dict) -> tuple[Split, Split, list[str]]:
    """sklearn's 8x8 digits upsampled to 16x16 so small CNNs have room for a few poolings."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    images = (x * (255.0 / 16.0)).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    full = Split(images, torch.from_numpy(bunch.target).to(torch.int64))
    train, test = _fixed_test_cut(full)
    return train, test, [str(c) for c in bunch.target_names]


# --- MNIST / Fashion-MNIST (IDX files) ------------------------------------------------------

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@register_dataset("fashion_mnist", config_keys=("data_dir",))
def _load_fashion_mnist(config: dict) -> tuple[Split, Split, list[str]]:
    return _load_idx_dataset(config, "fashion_mnist", "fashion-mnist", "FashionMNIST",
                             [DEBIAN_FASHION_DIR], FASHION_CLASSES)


@register_dataset("mnist", config_keys=("data_dir",))
def _load_mnist(config: dict) -> tuple[Split, Split, list[str]]:
    return _load_idx_dataset(config, "mnist", "mnist", "MNIST", [], [str(d) for d in range(10)])


def _load_idx_dataset(config: dict, dataset: str, subdir: str, tv_class: str,
                      extra_dirs: list[Path], class_names: list[str]
                      ) -> tuple[Split, Split, list[str]]:
    """Find the four IDX files in the usual places, downloading them only when allowed."""
    data_dir = Path(config["data_dir"])
    tv_raw = data_dir / tv_class / "raw"
    candidates = [data_dir / subdir, tv_raw, data_dir, *extra_dirs]
    files = _find_idx_files(candidates)
    if files is None and config["download"]:
        _torchvision_download(tv_class, data_dir, dataset)
        files = _find_idx_files([tv_raw])
    if files is None:
        looked = ", ".join(str(d) for d in candidates)
        raise UserError(f"{dataset}: IDX files (train-images-idx3-ubyte[.gz], ...) not found; "
                        f"looked in {looked}; {DOWNLOAD_HINT}")
    train = _idx_split(files["train_images"], files["train_labels"])
    test = _idx_split(files["test_images"], files["test_labels"])
    return train, test, list(class_names)


def _find_idx_files(candidates: list[Path]) -> dict[str, Path] | None:
    """First directory holding all four files; plain files win over .gz (faster to read)."""
    for directory in candidates:
        files = {key: _idx_file(directory, stem) for key, stem in _IDX_STEMS.items()}
        if all(files.values()):
            return files  # type: ignore[return-value]
    return None


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_split(images_path: Path, labels_path: Path) -> Split:
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{labels_path}: expected {len(images)} labels, got shape {labels.shape}")
    return Split(torch.from_numpy(images).unsqueeze(1).contiguous(),
                 torch.from_numpy(labels.astype(np.int64)))


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a writable native-endian array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {_one_line(exc)}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(shape)
    if len(raw) - header != count * dtype.itemsize:
        raise UserError(f"{path}: IDX size does not match its header shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


# --- CIFAR-10 / CIFAR-100 (python pickle batches) -------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    labels_key: str
    names_key: str
    tv_class: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            "test_batch", "batches.meta", "labels", "label_names", "CIFAR10"),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), "test", "meta", "fine_labels",
                             "fine_label_names", "CIFAR100"),
}


@register_dataset("cifar10", config_keys=("data_dir",))
def _load_cifar10(config: dict) -> tuple[Split, Split, list[str]]:
    return _load_cifar(config, "cifar10")


@register_dataset("cifar100", config_keys=("data_dir",))
def _load_cifar100(config: dict) -> tuple[Split, Split, list[str]]:
    return _load_cifar(config, "cifar100")


def _load_cifar(config: dict, dataset: str) -> tuple[Split, Split, list[str]]:
    """Read the python-pickle batches under ``data_dir``, downloading them only when allowed."""
    layout = _CIFAR_LAYOUTS[dataset]
    data_dir = Path(config["data_dir"])
    root = data_dir / layout.folder
    missing = _missing_files(root, layout)
    if missing and config["download"]:
        _torchvision_download(layout.tv_class, data_dir, dataset)
        missing = _missing_files(root, layout)
    if missing:
        raise UserError(f"{dataset}: missing {', '.join(missing)} in {root}; {DOWNLOAD_HINT}")
    train = _cifar_split([root / f for f in layout.train_files], layout.labels_key)
    test = _cifar_split([root / layout.test_file], layout.labels_key)
    meta = _unpickle(root / layout.meta_file)
    if layout.names_key not in meta:
        raise UserError(f"{root / layout.meta_file}: no {layout.names_key!r} entry")
    return train, test, [_text(n) for n in meta[layout.names_key]]


def _missing_files(root: Path, layout: _CifarLayout) -> list[str]:
    needed = (*layout.train_files, layout.test_file, layout.meta_file)
    return [name for name in needed if not (root / name).is_file()]


def _cifar_split(paths: list[Path], labels_key: str) -> Split:
    """Concatenate batches; each row is 3072 bytes: the R, G, B planes of a 32x32 image."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if "data" not in batch or labels_key not in batch:
            raise UserError(f"{path}: not a CIFAR batch (needs 'data' and {labels_key!r})")
        data = np.asarray(batch["data"], dtype=np.uint8)
        batch_labels = np.asarray(batch[labels_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != len(data):
            raise UserError(f"{path}: expected (N, 3072) data with N labels, got {data.shape} "
                            f"and {len(batch_labels)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return Split(torch.from_numpy(np.concatenate(images)).contiguous(),
                 torch.from_numpy(np.concatenate(labels)))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch needs nothing else, and
    a crafted file in ``data_dir`` must not run code (pickle would call any global it names)."""

    ALLOWED = {(f"numpy{core}.{module}", name) for core in ("._core", ".core")
               for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
               } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays and plain "
                                     "containers are read)")


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle with its keys as ``str``, py2 files included; nothing but arrays
    and plain containers is constructed."""
    try:
        with path.open("rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read CIFAR file {path}: {_one_line(exc)}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a CIFAR pickle (expected a dict)")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --- folder (the user's own images) ---------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@register_dataset("folder", config_keys=("path", "image_size", "in_memory", "workers"))
def _load_folder(config: dict) -> tuple[Split, Split, list[str]]:
    """``path/train/<class>/*`` (+ optional ``path/test/<class>/*``) or ``path/<class>/*``.

    ``in_memory: auto`` (default) decodes everything up front when it fits in
    :data:`IN_MEMORY_LIMIT`; otherwise ``workers`` DataLoader processes decode each batch.
    """
    root = _folder_path(config)
    size = _int_key(config, "image_size", 32, minimum=1)
    workers = _int_key(config, "workers", min(8, os.cpu_count() or 1), minimum=0)
    in_memory = config.get("in_memory", "auto")
    if in_memory != "auto" and not isinstance(in_memory, bool):
        raise ConfigError(f"must be true, false or auto, got {in_memory!r}",
                          key="data.in_memory")
    train_dir, test_dir = _folder_layout(root)
    train_files = _scan_classes(train_dir)
    class_names = sorted(train_files)
    if len(class_names) < 2:
        raise UserError(f"folder dataset {train_dir}: found {len(class_names)} class folder, "
                        "need at least 2")
    test_files = None if test_dir is None else _scan_classes(test_dir)
    if test_files is not None:
        _check_same_classes(class_names, sorted(test_files), train_dir, test_dir)
    if in_memory == "auto":
        count = sum(map(len, train_files.values())) + sum(map(len, (test_files or {}).values()))
        in_memory = count * 3 * size * size <= IN_MEMORY_LIMIT
    read = functools.partial(_folder_split, in_memory=in_memory, workers=workers)
    train = read(train_files, class_names, size)
    if test_files is None:
        train, test = _fixed_test_cut(train)
        return train, test, class_names
    return train, read(test_files, class_names, size), class_names


def _folder_path(config: Mapping[str, Any]) -> Path:
    path = config.get("path")
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ConfigError("required for dataset `folder`: the directory with one sub-folder "
                          "per class", key="data.path")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"folder dataset: {root} is not a directory")
    return root


def _folder_layout(root: Path) -> tuple[Path, Path | None]:
    """Layout A (``train/`` and optional ``test/``) if ``train/`` exists, else layout B."""
    train, test = root / "train", root / "test"
    if train.is_dir():
        return train, test if test.is_dir() else None
    if test.is_dir():
        raise UserError(f"folder dataset: found {test} but no {train}; put the training images "
                        f"in {train}/<class>/")
    return root, None


def _scan_classes(directory: Path) -> dict[str, list[Path]]:
    """Map each class folder (non-hidden sub-directory) to its sorted image files."""
    class_dirs = sorted(p for p in directory.iterdir()
                        if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"folder dataset: no class folders in {directory} (expected "
                        f"{directory}/<class>/<image>.png)")
    classes = {}
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                            f"{class_dir}")
        classes[class_dir.name] = files
    return classes


def _check_same_classes(train: list[str], test: list[str], train_dir: Path,
                        test_dir: Path) -> None:
    if train == test:
        return
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    raise UserError(f"folder dataset: class folders of {test_dir} differ from {train_dir}: "
                    f"missing in test {only_train}, not in train {only_test}")


def _folder_split(files: dict[str, list[Path]], class_names: list[str], size: int, *,
                  in_memory: bool, workers: int) -> Split:
    """The folder's images with labels: all decoded into one uint8 tensor (``in_memory``), or
    as :class:`ImageFiles` with only the first image decoded, so a bad file fails here."""
    paths = [p for name in class_names for p in files[name]]
    labels = torch.tensor([i for i, name in enumerate(class_names) for _ in files[name]],
                          dtype=torch.int64)
    images = ImageFiles(paths, size, workers)
    if in_memory:
        return Split(images[:].contiguous(), labels)
    images[:1]
    return Split(images, labels)


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8: RGB, bilinear resize."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"folder dataset: cannot read image {path}: {_one_line(exc)}") from exc
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
