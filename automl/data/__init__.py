"""Datasets as uint8 images: registered by plugins, loaded once per process, cut into seeded
splits.

A dataset is registered through the ``register_datasets`` discovery hook (the built-in ones in
:mod:`automl.data.builtin`, exactly like a plugin's) and loaded by its ``data:`` settings
(:mod:`automl.data.settings`: every key, default and check). :mod:`automl.data.loading` loads
it once per process and cuts the validation split (seeded, stratified) from the training set;
the official test split is never touched by a search. The modules beside it hold one dataset
each (``digits``, ``idx``: MNIST and Fashion-MNIST, ``cifar``, ``folder``), the split types
(``splits``), on-disk images (``image_files``), normalisation statistics (``stats``) and
derived bundles (``variants``).

The names below are imported from their modules on first use, so ``import automl.data``
(discovery, the space parser) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DataBundle",
    "ImageFiles",
    "Split",
    "available_datasets",
    "check_data",
    "clear_cache",
    "load_data",
    "stats_sample",
    "stratified_split",
    "with_fewer_samples",
    "with_validation_in_train",
]

#: Where each name lives (the public ones above, and what callers outside use by name).
_HOMES = {
    "DataBundle": "splits", "Split": "splits", "stratified_split": "splits",
    "ImageFiles": "image_files", "IMAGE_SUFFIXES": "image_files",
    "available_datasets": "dataset", "check_data": "loading", "clear_cache": "loading",
    "load_data": "loading",
    "stats_sample": "stats",
    "with_fewer_samples": "variants", "with_validation_in_train": "variants",
    "DEBIAN_FASHION_DIR": "idx", "FASHION_CLASSES": "idx",
}
#: The old module's private names that inference.py and bench/ still import.
_RENAMED = {"_scan_classes": ("folder", "scan_classes"), "_read_idx": ("idx", "read_idx")}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        module, attr = _HOMES[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_RENAMED})
