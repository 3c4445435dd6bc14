"""MNIST and Fashion-MNIST: the four IDX files, found in the usual places (torchvision's
layout, Debian's ``dataset-fashion-mnist`` package) or downloaded when allowed, read by a
small reader of our own."""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from automl.data import download
from automl.data.splits import Split
from automl.errors import UserError, exception_line

__all__ = ["DEBIAN_FASHION_DIR", "FASHION_CLASSES", "load", "locate", "read_idx"]

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


@dataclass(frozen=True)
class _IdxSet:
    subdir: str  # our own folder under data_dir
    tv_class: str  # torchvision's class (its download and its folder, ``CLASS/raw``)
    extra_dirs: tuple[Path, ...]
    class_names: tuple[str, ...]


_SETS = {
    "fashion_mnist": _IdxSet("fashion-mnist", "FashionMNIST", (DEBIAN_FASHION_DIR,),
                             tuple(FASHION_CLASSES)),
    "mnist": _IdxSet("mnist", "MNIST", (), tuple(str(d) for d in range(10))),
}


def locate(config: dict) -> dict[str, Path]:
    """The four IDX files of ``config["dataset"]``: the first folder holding them all,
    downloading them only when allowed."""
    dataset = config["dataset"]
    idx_set = _SETS[dataset]
    data_dir = Path(config["data_dir"])
    tv_raw = data_dir / idx_set.tv_class / "raw"
    candidates = [data_dir / idx_set.subdir, tv_raw, data_dir, *idx_set.extra_dirs]
    files = _find_idx_files(candidates)
    if files is None and config["download"]:
        download.torchvision_download(idx_set.tv_class, data_dir, dataset)
        files = _find_idx_files([tv_raw])
    if files is None:
        looked = ", ".join(str(d) for d in candidates)
        raise UserError(f"{dataset}: IDX files (train-images-idx3-ubyte[.gz], ...) not found; "
                        f"looked in {looked}; {download.DOWNLOAD_HINT}")
    return files


def load(config: dict) -> tuple[Split, Split, list[str]]:
    files = locate(config)
    train = _idx_split(files["train_images"], files["train_labels"])
    test = _idx_split(files["test_images"], files["test_labels"])
    return train, test, list(_SETS[config["dataset"]].class_names)


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
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{labels_path}: expected {len(images)} labels, got shape {labels.shape}")
    return Split(torch.from_numpy(images).unsqueeze(1).contiguous(),
                 torch.from_numpy(labels.astype(np.int64)))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a writable native-endian array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exception_line(exc)}") from exc
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


