"""Image files on disk: which files are images, how one is read (RGB, resized), and
:class:`ImageFiles`, a folder too large to decode up front that indexes like a uint8 tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from automl.errors import UserError, exception_line

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


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
            arrays = list(pool.map(lambda i: read_image(self.paths[i], self.size), rows))
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
        return torch.from_numpy(read_image(self.paths[i], self.size)), self.labels[i]


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8: RGB, bilinear resize."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"folder dataset: cannot read image {path}: {exception_line(exc)}"
                        ) from exc
    return np.array(rgb, dtype=np.uint8).transpose(2, 0, 1)  # writable: torch shares it
