"""Per-channel normalisation statistics of the images a model trains on."""

from __future__ import annotations

import torch

from automl.data.image_files import ImageFiles
from automl.data.splits import Split

__all__ = ["STATS_SAMPLE", "channel_stats", "stats_sample", "training_stats"]

STATS_SAMPLE = 2048  # images of an on-disk split that normalization statistics are estimated on


def stats_sample(split: Split) -> torch.Tensor:
    """The images statistics are computed on: all of an in-memory split, else a seeded sample
    of :data:`STATS_SAMPLE` images (decoding a large folder twice would cost minutes)."""
    if not isinstance(split.images, ImageFiles):
        return split.images
    count = min(STATS_SAMPLE, len(split))
    return split.images[torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
                        [:count].sort().values]


def training_stats(train: Split, unlabelled: Split | None = None
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics of every image the model trains on: the labelled training
    split and, when there is one, the unlabelled one (its images are training inputs too,
    and no label is needed to count them)."""
    samples = [stats_sample(train)]
    if unlabelled is not None and len(unlabelled):
        samples.append(stats_sample(unlabelled))
    return channel_stats(*samples)


def channel_stats(*images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images / 255`` (one batch, or several of
    the same channels pooled), in float64 chunks."""
    c = images[0].shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for batch in images:
        n, _, h, w = batch.shape
        chunk = max(1, (1 << 22) // (c * h * w))  # bounds the float64 copy to ~32 MiB
        for start in range(0, n, chunk):
            x = batch[start:start + chunk].to(torch.float64).div_(255.0)
            total += x.sum(dim=(0, 2, 3))
            total_sq += x.square().sum(dim=(0, 2, 3))
        count += n * h * w
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())

