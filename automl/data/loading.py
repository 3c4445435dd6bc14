"""Loading a dataset by its ``data:`` settings: once per process, then cut into splits.

A dataset that fits is held fully in memory as ``uint8`` (N, C, H, W), so a search process
loads it once and each trial only indexes and normalizes batches (on the GPU when there is one).
The validation split is a seeded stratified cut from the official training set; the official
test split is never touched by a search. ``train_fraction`` trains on a seeded stratified part
of what is left after that cut (the validation split does not depend on it), and
``labelled_fraction`` keeps the labels of a seeded stratified part of that: the other images
become the unlabelled split (with a folder dataset's ``unlabelled/`` images).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automl.data import settings as data_settings
from automl.data.dataset import Dataset
from automl.data.splits import (
    DataBundle,
    Split,
    concat,
    stratified_split,
    subset,
    without_labels,
)
from automl.data.stats import training_stats
from automl.errors import UserError

__all__ = ["check_data", "clear_cache", "load_data"]

_SOURCES: dict[tuple, tuple] = {}  # what the loader returned, by source key
_BUNDLES: dict[tuple, DataBundle] = {}  # by source key and split settings


def clear_cache() -> None:
    """Forget loaded datasets (tests, or a long-lived process that wants memory back)."""
    _SOURCES.clear()
    _BUNDLES.clear()


def check_data(config: Mapping[str, Any]) -> None:
    """Everything :func:`load_data` would refuse before reading the images: the settings, and
    the files (found, or downloaded when allowed). For a process that only hands the data
    settings on (the parent of ``--jobs`` workers), so it holds no copy of the images."""
    cfg = data_settings.for_loading(config)
    dataset = _dataset(cfg["dataset"])
    if dataset.locate is not None:
        dataset.locate(cfg)


def load_data(config: Mapping[str, Any]) -> DataBundle:
    """Load (once per process) the dataset described by the ``data:`` config mapping."""
    cfg = data_settings.for_loading(config)
    dataset = _dataset(cfg["dataset"])
    source_key = _source_key(cfg, dataset.reads)
    bundle_key = (source_key, cfg["val_fraction"], cfg["split_seed"], cfg["train_fraction"],
                  cfg["labelled_fraction"])
    if bundle_key not in _BUNDLES:
        if source_key not in _SOURCES:
            _SOURCES[source_key] = _loaded(dataset, cfg)
        train_full, test, names, *unlabelled = _SOURCES[source_key]
        _BUNDLES[bundle_key] = _build_bundle(
            cfg["dataset"], train_full, test, names, cfg["val_fraction"], cfg["split_seed"],
            cfg["train_fraction"], cfg["labelled_fraction"], *unlabelled)
    return _BUNDLES[bundle_key]


def _loaded(dataset: Dataset, cfg: dict[str, Any]) -> tuple:
    """What the loader returned, refused with the plugin's name unless it has the promised
    form (a plugin's loader is code this project does not test): (train, test, class names)
    and, optionally, a Split of unlabelled training images."""
    loaded = dataset.load(cfg)
    if not (isinstance(loaded, tuple) and len(loaded) in (3, 4) and isinstance(loaded[0], Split)
            and isinstance(loaded[1], Split) and all(isinstance(n, str) for n in loaded[2])
            and (len(loaded) == 3 or loaded[3] is None or isinstance(loaded[3], Split))):
        raise UserError(f"dataset '{dataset.name}' (plugin '{dataset.plugin}'): its loader "
                        "returned something other than (train Split, test Split, class names)")
    return loaded


def _dataset(name: str) -> Dataset:
    from automl.discovery import dataset_catalog

    return dataset_catalog()[name]  # for_loading has checked the name


def _source_key(cfg: Mapping[str, Any], reads: tuple[str, ...] | None) -> tuple:
    """Cache key of the loaded (unsplit) data: the dataset plus the config keys it reads."""
    if reads is None:
        reads = tuple(sorted(k for k in cfg if k not in (*data_settings.SPLIT_KEYS, "dataset",
                                                         "batch_size")))
    return (cfg["dataset"], *((k, repr(cfg.get(k))) for k in reads))


def _build_bundle(name: str, train_full: Split, test: Split, class_names: list[str],
                  val_fraction: float, split_seed: int, train_fraction: float = 1.0,
                  labelled_fraction: float = 1.0, unlabelled: Split | None = None
                  ) -> DataBundle:
    """Cut val from the full training set, keep ``train_fraction`` of the rest (stratified,
    seeded, at least one image per class), keep the labels of ``labelled_fraction`` of that
    (the same way) and join the others to the loader's ``unlabelled`` images. Normalization
    stats come from the training images, labelled and unlabelled (never val or test)."""
    _check_consistent(name, train_full, test, class_names)
    keep, cut = stratified_split(train_full.labels, val_fraction, split_seed)
    train, val = subset(train_full, keep), subset(train_full, cut)
    if len(val) == 0 or len(test) == 0:
        raise UserError(f"dataset {name}: too few images to cut validation and test sets "
                        f"({len(train_full)} training, {len(test)} test); add images per class")
    if train_fraction < 1.0:
        # Dropping 1 - fraction keeps the kept side non-empty for every class.
        train = subset(train, stratified_split(train.labels, 1.0 - train_fraction,
                                                split_seed)[0])
    if unlabelled is not None and unlabelled.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"dataset {name}: unlabelled images {tuple(unlabelled.images.shape[1:])}"
                         f" and train images {tuple(train.images.shape[1:])} differ in shape")
    unlabelled = None if unlabelled is None else without_labels(unlabelled)
    if labelled_fraction < 1.0:
        labelled, cut = stratified_split(train.labels, 1.0 - labelled_fraction, split_seed)
        train, unlabelled_part = subset(train, labelled), without_labels(subset(train, cut))
        unlabelled = unlabelled_part if unlabelled is None else concat(unlabelled,
                                                                        unlabelled_part)
    mean, std = training_stats(train, unlabelled)
    return DataBundle(name=name, train=train, val=val, test=test,
                      num_classes=len(class_names), in_chans=train.images.shape[1],
                      image_size=train.images.shape[-1], mean=mean, std=std,
                      class_names=list(class_names), unlabelled=unlabelled)


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

