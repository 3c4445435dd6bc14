"""CIFAR-10 and CIFAR-100: the python-pickle batches under ``data_dir``, downloaded only when
allowed, unpickled by a reader that constructs nothing but arrays."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl.data import download
from automl.data.splits import Split
from automl.errors import UserError, exception_line

__all__ = ["load", "locate"]


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


def locate(config: dict) -> Path:
    """The folder holding every batch of ``config["dataset"]``, downloading them only when
    allowed."""
    dataset = config["dataset"]
    layout = _CIFAR_LAYOUTS[dataset]
    data_dir = Path(config["data_dir"])
    root = data_dir / layout.folder
    missing = _missing_files(root, layout)
    if missing and config["download"]:
        download.torchvision_download(layout.tv_class, data_dir, dataset)
        missing = _missing_files(root, layout)
    if missing:
        raise UserError(f"{dataset}: missing {', '.join(missing)} in {root}; "
                        f"{download.DOWNLOAD_HINT}")
    return root


def load(config: dict) -> tuple[Split, Split, list[str]]:
    layout = _CIFAR_LAYOUTS[config["dataset"]]
    root = locate(config)
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
        raise UserError(f"cannot read CIFAR file {path}: {exception_line(exc)}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a CIFAR pickle (expected a dict)")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


