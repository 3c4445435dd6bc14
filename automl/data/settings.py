"""The ``data:`` settings: every key, its default and its check, in one place.

A space file and :func:`automl.data.load_data` both validate through :func:`checked`, so a value
is refused with the same words whichever reads it first (the space parser adds the file and
line). No torch here: parsing a space does not load data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automl.data.dataset import available_datasets
from automl.errors import ConfigError

__all__ = ["DATA_KEYS", "DATA_ACCESS_KEYS", "DEFAULTS", "SPACE_DEFAULTS", "SPLIT_KEYS",
           "UNLABELLED_FOLDER", "checked", "data_keys", "for_loading", "for_space",
           "unlabelled_problem"]

#: Keys every dataset understands. A dataset adds the keys its loader reads (``reads`` when it
#: registers; the folder dataset's are ``path``, ``image_size``, ``in_memory``, ``workers``).
#: ``include_val`` is deliberately not one: training on the validation split is for a final
#: model only (``automl train --include-val``); a search that names it is refused.
#: ``labelled_fraction`` keeps labels on that part of the training split only; the rest
#: becomes ``DataBundle.unlabelled`` (semi-supervised techniques read it).
DATA_KEYS = ("dataset", "batch_size", "data_dir", "download", "val_fraction", "split_seed",
             "train_fraction", "labelled_fraction", "image_size", "path", "workers",
             "in_memory")
#: Keys that say where the files are and how they are read, not what is trained on: a study's
#: definition and a tracker's parameters leave them out.
DATA_ACCESS_KEYS = ("data_dir", "download", "workers", "in_memory")
#: Keys that cut the loaded images into splits (or fetch them): changing one re-cuts the
#: cached images instead of loading them again.
SPLIT_KEYS = ("val_fraction", "split_seed", "train_fraction", "labelled_fraction", "download")
#: What a left-out key means. ``workers: None`` is the machine's cores, at most 8.
DEFAULTS: dict[str, Any] = {
    "dataset": "digits", "batch_size": 64, "data_dir": "~/.cache/automl/data",
    "download": False, "val_fraction": 0.1, "split_seed": 0, "train_fraction": 1.0,
    "labelled_fraction": 1.0, "image_size": 32, "in_memory": "auto", "workers": None,
}
#: The defaults a space writes into its own ``data:`` (and so into its recipes and its study's
#: definition); the others are filled in when the data is loaded, so a study created before a
#: default is added still resumes.
SPACE_DEFAULTS = ("dataset", "batch_size")
SEED_MAX = 2**63 - 1  # what torch.manual_seed takes
#: The folder dataset's folder of images without labels: ``path/unlabelled/`` (beside the
#: class folders, or beside ``train/`` and ``test/``), never a class.
UNLABELLED_FOLDER = "unlabelled"


def data_keys() -> tuple[str, ...]:
    """Every key a ``data:`` mapping may hold: the shared ones and those a dataset reads."""
    from automl.discovery import dataset_catalog

    extra = {k for d in dataset_catalog().values() for k in d.reads or () if k not in DATA_KEYS}
    return (*DATA_KEYS, *sorted(extra))


def for_space(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A space file's ``data:`` checked, with the defaults a space records filled in."""
    return checked({**{k: DEFAULTS[k] for k in SPACE_DEFAULTS}, **settings})


def for_loading(settings: Any) -> dict[str, Any]:
    """``settings`` checked, every default filled in and ``data_dir`` made absolute: the one
    form loaders and cache keys see. The dataset must be named (a recipe always does)."""
    if not isinstance(settings, Mapping):
        raise ConfigError("must be a mapping with at least a `dataset` key", key="data")
    if "dataset" not in settings:
        raise ConfigError(f"required, one of: {', '.join(available_datasets())}",
                          key="data.dataset")
    cfg = checked(settings)
    for key, value in DEFAULTS.items():
        cfg.setdefault(key, value)
    if cfg["workers"] is None:
        cfg["workers"] = min(8, os.cpu_count() or 1)
    cfg["data_dir"] = str(Path(cfg["data_dir"]).expanduser().resolve())
    for key in ("val_fraction", "train_fraction", "labelled_fraction"):
        cfg[key] = float(cfg[key])
    return cfg


def unlabelled_problem(settings: Mapping[str, Any]) -> str | None:
    """Why a ``data:`` mapping gives no unlabelled training images (None when it does, or may:
    a folder that is not there yet is the loader's to refuse). For techniques that need them,
    so a space is refused when it is read, not when its first trial trains."""
    fraction = settings.get("labelled_fraction", DEFAULTS["labelled_fraction"])
    if _is_number(fraction) and fraction < 1:
        return None
    if settings.get("dataset") == "folder":
        root = Path(str(settings.get("path", ""))).expanduser()
        if not root.is_dir() or (root / UNLABELLED_FOLDER).is_dir():
            return None
        return (f"needs unlabelled training images: set data.labelled_fraction below 1 or add "
                f"a folder {root / UNLABELLED_FOLDER}")
    return "needs unlabelled training images: set data.labelled_fraction below 1"


def checked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check each key present (unknown keys are the space parser's to refuse, with a hint);
    raise :class:`ConfigError` naming ``data.KEY``. Returns a copy."""
    from automl.discovery import dataset_catalog

    cfg, catalog = dict(settings), dataset_catalog()
    name = cfg.get("dataset")
    if not isinstance(name, str) or name not in catalog:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(catalog))}",
                          key="data.dataset")
    for key, check in _CHECKS.items():
        if key in cfg:
            problem = check(cfg[key])
            if problem:
                raise ConfigError(f"{problem}, got {cfg[key]!r}", key=f"data.{key}")
    for key in catalog[name].requires:
        if key not in cfg:
            raise ConfigError(f"required for dataset {name!r}", key=f"data.{key}")
    return cfg




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(least: int):
    return lambda v: None if _is_int(v) and v >= least else f"expected an integer >= {least}"


_CHECKS = {
    "batch_size": _at_least(1),
    "val_fraction": lambda v: None if _is_number(v) and 0 < v < 1
    else "expected a number in (0, 1)",
    "train_fraction": lambda v: None if _is_number(v) and 0 < v <= 1
    else "expected a number in (0, 1]",
    "labelled_fraction": lambda v: None if _is_number(v) and 0 < v <= 1
    else "expected a number in (0, 1]",
    "split_seed": lambda v: None if _is_int(v) and 0 <= v <= SEED_MAX
    else f"expected an integer in [0, {SEED_MAX}]",
    "image_size": _at_least(1),
    "workers": _at_least(0),
    "in_memory": lambda v: None if isinstance(v, bool) or v == "auto"
    else "expected true, false or auto",
    "download": lambda v: None if isinstance(v, bool) else "expected true or false",
    "data_dir": lambda v: None if isinstance(v, str | os.PathLike) and str(v)
    else "expected a path",
    "path": lambda v: None if isinstance(v, str | os.PathLike) and str(v) else "expected a path",
}
