"""Bundles derived from a loaded one: an imbalanced variant (benchmarks, tests) and the final
model's training split with the validation images in it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from automl.data.splits import DataBundle, concat, subset
from automl.data.stats import training_stats

__all__ = ["with_fewer_samples", "with_validation_in_train"]


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
    train = subset(data.train, kept.nonzero().flatten())
    mean, std = training_stats(train, data.unlabelled)
    return replace(data, train=train, mean=mean, std=std)


def with_validation_in_train(data: DataBundle) -> DataBundle:
    """``data`` whose training split is train + val (for a final model only): ``val`` is still
    there to report on, but its scores are then not held out. Normalization statistics are
    computed again on the images now trained on; test stays as it is."""
    train = concat(data.train, data.val)
    mean, std = training_stats(train, data.unlabelled)
    return replace(data, train=train, mean=mean, std=std)

