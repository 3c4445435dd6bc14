"""The user's own images: ``path/train/<class>/*`` (+ optional ``path/test/<class>/*``) or
``path/<class>/*``, plus optional ``path/unlabelled/*`` (images without labels, subfolders
allowed), decoded into memory when they fit, else read from disk batch by batch."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from automl.data.image_files import IMAGE_SUFFIXES, ImageFiles
from automl.data.settings import UNLABELLED_FOLDER
from automl.data.splits import NO_LABEL, Split, fixed_test_cut
from automl.errors import UserError

__all__ = ["IN_MEMORY_LIMIT", "load", "locate", "scan_classes"]

IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded images a folder may hold in memory (`in_memory: auto`)


def locate(config: Mapping[str, Any]) -> tuple[list[str], dict, dict | None, list[Path]]:
    """The class names, each class's image files (train, and test when there is a test
    folder), checked: at least two classes, the same ones in train and test; and the files of
    ``unlabelled/`` (empty without that folder)."""
    root = Path(config["path"]).expanduser()
    if not root.is_dir():
        raise UserError(f"folder dataset: {root} is not a directory")
    train_dir, test_dir = _folder_layout(root)
    train_files = scan_classes(train_dir, exclude=(UNLABELLED_FOLDER,) if train_dir == root
                               else ())
    if train_dir != root and UNLABELLED_FOLDER in train_files:
        raise UserError(f"folder dataset: {train_dir / UNLABELLED_FOLDER} would be a class; put "
                        f"images without labels in {root / UNLABELLED_FOLDER}/")
    class_names = sorted(train_files)
    if len(class_names) < 2:
        raise UserError(f"folder dataset {train_dir}: found {len(class_names)} class folder, "
                        "need at least 2")
    test_files = None if test_dir is None else scan_classes(test_dir)
    if test_files is not None:
        _check_same_classes(class_names, sorted(test_files), train_dir, test_dir)
    return class_names, train_files, test_files, _unlabelled_files(root / UNLABELLED_FOLDER)


def load(config: Mapping[str, Any]) -> tuple[Split, Split, list[str], Split | None]:
    """``in_memory: auto`` (default) decodes everything up front when it fits in
    :data:`IN_MEMORY_LIMIT`; otherwise ``workers`` DataLoader processes decode each batch."""
    class_names, train_files, test_files, unlabelled_files = locate(config)
    size, in_memory = config["image_size"], config["in_memory"]
    if in_memory == "auto":
        count = (sum(map(len, train_files.values())) + sum(map(len, (test_files or {}).values()))
                 + len(unlabelled_files))
        in_memory = count * 3 * size * size <= IN_MEMORY_LIMIT
    read = functools.partial(_folder_split, in_memory=in_memory, workers=config["workers"])
    train = read(train_files, class_names, size)
    unlabelled = (read({UNLABELLED_FOLDER: unlabelled_files}, [UNLABELLED_FOLDER], size,
                       label=NO_LABEL) if unlabelled_files else None)
    if test_files is None:
        train, test = fixed_test_cut(train)
        return train, test, class_names, unlabelled
    return train, read(test_files, class_names, size), class_names, unlabelled


def _unlabelled_files(directory: Path) -> list[Path]:
    """Every image under ``directory`` (subfolders too), sorted; none without the folder."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise UserError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                        f"{directory}")
    return files


def _folder_layout(root: Path) -> tuple[Path, Path | None]:
    """Layout A (``train/`` and optional ``test/``) if ``train/`` exists, else layout B."""
    train, test = root / "train", root / "test"
    if train.is_dir():
        return train, test if test.is_dir() else None
    if test.is_dir():
        raise UserError(f"folder dataset: found {test} but no {train}; put the training images "
                        f"in {train}/<class>/")
    return root, None


def scan_classes(directory: Path, exclude: tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """Map each class folder (non-hidden sub-directory not in ``exclude``) to its sorted image
    files."""
    class_dirs = sorted(p for p in directory.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.name not in exclude)
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
                  in_memory: bool, workers: int, label: int | None = None) -> Split:
    """The folder's images with labels (each class's index, or ``label`` for all): all
    decoded into one uint8 tensor (``in_memory``), or as :class:`ImageFiles` with only the
    first image decoded, so a bad file fails here."""
    paths = [p for name in class_names for p in files[name]]
    labels = torch.tensor([i if label is None else label
                           for i, name in enumerate(class_names) for _ in files[name]],
                          dtype=torch.int64)
    images = ImageFiles(paths, size, workers)
    if in_memory:
        return Split(images[:].contiguous(), labels)
    images[:1]
    return Split(images, labels)


