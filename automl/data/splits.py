"""The shapes data takes: a :class:`Split` (uint8 images with labels), a :class:`DataBundle`
(what a trial needs), and the seeded stratified cuts between splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from automl.data.image_files import ImageFiles

__all__ = ["NO_LABEL", "DataBundle", "Split", "concat", "fixed_test_cut", "stratified_split",
           "subset", "without_labels"]

FIXED_TEST_FRACTION = 0.2  # test cut for datasets without an official test split
FIXED_TEST_SEED = 0  # independent of ``split_seed`` so the test set never changes
NO_LABEL = -1  # every label of an unlabelled split: a loss or an accuracy on it fails loudly


@dataclass(frozen=True)
class Split:
    """One set of images with labels; validated so every consumer can rely on the layout."""

    images: torch.Tensor | ImageFiles  # uint8, shape (N, C, H, W), contiguous, CPU
    labels: torch.Tensor  # int64, shape (N,)

    def __post_init__(self) -> None:
        img, lab = self.images, self.labels
        if isinstance(img, ImageFiles):
            if lab.dtype != torch.int64 or lab.shape != (len(img),):
                raise ValueError(f"Split.labels must be int64 ({len(img)},)")
            return
        if img.dtype != torch.uint8 or img.ndim != 4:
            raise ValueError(f"Split.images must be uint8 (N, C, H, W), got {img.dtype} "
                             f"{tuple(img.shape)}")
        if lab.dtype != torch.int64 or lab.ndim != 1 or len(lab) != len(img):
            raise ValueError(f"Split.labels must be int64 (N,) with N={len(img)}, got "
                             f"{lab.dtype} {tuple(lab.shape)}")
        if img.device.type != "cpu" or lab.device.type != "cpu" or not img.is_contiguous():
            raise ValueError("Split tensors must be contiguous CPU tensors")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataBundle:
    """Everything a trial needs about its data; shared (cached) within a process, do not mutate."""

    name: str
    train: Split  # what the search trains on (``train_fraction`` of the non-validation images)
    val: Split  # seeded stratified cut from the training set
    test: Split  # the official test split (never used by a search)
    num_classes: int
    in_chans: int
    image_size: int  # H (== W) of the stored images
    mean: tuple[float, ...]  # per-channel mean / 255 of the training images (train, and
    std: tuple[float, ...]  # unlabelled when there is one: every image the model trains on)
    class_names: list[str]
    #: Training images without labels (``data.labelled_fraction`` < 1, or a folder dataset's
    #: ``unlabelled/``); every label is :data:`NO_LABEL`. None: there are none.
    unlabelled: Split | None = None


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sorted ``(keep_idx, cut_idx)`` cutting ``fraction`` of every class, seeded.

    Each class with at least two samples gives at least one to each side, so small classes still
    appear in the cut; a class with a single sample stays in ``keep``.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = labels.cpu()
    empty = torch.empty(0, dtype=torch.int64)
    if len(labels) == 0:
        return empty, empty.clone()
    gen = torch.Generator().manual_seed(seed)
    by_class = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, sorted=True, return_counts=True)[1].tolist()
    keep, cut = [empty], [empty]
    for idx in torch.split(by_class, counts):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_cut = _cut_count(len(idx), fraction)
        cut.append(idx[:n_cut])
        keep.append(idx[n_cut:])
    return torch.cat(keep).sort().values, torch.cat(cut).sort().values


def _cut_count(n: int, fraction: float) -> int:
    """Proportional share of one class, rounded half up, leaving both sides non-empty."""
    if n < 2:
        return 0
    return min(max(int(n * fraction + 0.5), 1), n - 1)



def subset(split: Split, idx: torch.Tensor) -> Split:
    if isinstance(split.images, ImageFiles):
        return Split(split.images.subset(idx), split.labels[idx].contiguous())
    return Split(split.images[idx].contiguous(), split.labels[idx].contiguous())


def without_labels(split: Split) -> Split:
    """``split``'s images with every label :data:`NO_LABEL`: nothing downstream can read the
    true labels of images a semi-supervised recipe must not see labelled."""
    return Split(split.images, torch.full_like(split.labels, NO_LABEL))


def concat(first: Split, second: Split) -> Split:
    if isinstance(first.images, ImageFiles) or isinstance(second.images, ImageFiles):
        if not (isinstance(first.images, ImageFiles) and isinstance(second.images, ImageFiles)):
            raise ValueError("cannot join an in-memory split with an on-disk one")
        images = ImageFiles(first.images.paths + second.images.paths, first.images.size,
                            first.images.workers)
        return Split(images, torch.cat([first.labels, second.labels]))
    return Split(torch.cat([first.images, second.images]).contiguous(),
                 torch.cat([first.labels, second.labels]))



def fixed_test_cut(full: Split) -> tuple[Split, Split]:
    """Stable stratified test set for datasets that ship without one."""
    keep, cut = stratified_split(full.labels, FIXED_TEST_FRACTION, FIXED_TEST_SEED)
    return subset(full, keep), subset(full, cut)

