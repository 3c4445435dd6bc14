"""Per-channel normalisation statistics of the images a model trains on."""

from __future__ import annotations

import torch

from automl.data.image_files import ImageFiles
from automl.data.splits import Split

__all__ = ["STATS_SAMPLE", "channel_stats", "stats_sample"]

STATS_SAMPLE = 2048  # images of an on-disk split that normalization statistics are estimated on


def stats_sample(split: Split) -> torch.Tensor:
    """The images statistics are computed on: all of an in-memory split, else a seeded sample
    of :data:`STATS_SAMPLE` images (decoding a large folder twice would cost minutes)."""
    if not isinstance(split.images, ImageFiles):
        return split.images
    count = min(STATS_SAMPLE, len(split))
    return split.images[torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
                        [:count].sort().values]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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

