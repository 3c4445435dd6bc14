"""What the semi-supervised techniques share: the unlabelled split (refused by name when there
is none), its images by index on the training device, a weak augmentation of them, the
normalisation the trainer gives its own batches, batch-norm statistics their extra forwards
leave alone, and one draw per micro-batch. Torch is imported inside the functions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from automl.errors import UserError

if TYPE_CHECKING:
    import torch

    from automl.data import Split
    from automl.state import TrainState

#: Padding of the weak view's random shift, as a fraction of the image side (FixMatch: 12.5%).
SHIFT_FRACTION = 0.125


def require_unlabelled(state: TrainState, technique: str) -> Split:
    """``state.data.unlabelled``, or a UserError naming the technique and the settings that
    give unlabelled images (a recipe built in code, not read from a space, reaches here)."""
    unlabelled = getattr(state.data, "unlabelled", None)
    if unlabelled is None or len(unlabelled) == 0:
        raise UserError(f"{technique}: the data has no unlabelled training images; set "
                        "data.labelled_fraction below 1 (or add an unlabelled/ folder to a "
                        "folder dataset)")
    return unlabelled


def images_at(split: Split, idx: torch.Tensor, state: TrainState) -> torch.Tensor:
    """uint8 images ``split`` holds at ``idx``, on the training device (an in-memory split is
    copied there once per training; images on disk are decoded by threads)."""
    from automl.data import ImageFiles
    from automl.trainer import split_on_device

    if isinstance(split.images, ImageFiles):
        return split.images[idx.cpu()].to(state.device, non_blocking=True)
    return split_on_device(split, state).images[idx]


def weak_augment(images: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """FixMatch's weak view of a uint8 batch: a random shift by up to 1/8 of the side
    (reflect padding) and, with ``flip``, a left-right mirror with probability 1/2."""
    from automl.plugins.flip import random_hflip
    from automl.plugins.random_crop import random_translate

    if flip:
        images = random_hflip(images, 0.5, generator)
    padding = max(1, round(SHIFT_FRACTION * images.shape[-1]))
    return random_translate(images, padding, "reflect", generator)


@contextmanager
def norm_statistics_kept(model: torch.nn.Module) -> Iterator[None]:
    """Forwards inside leave batch norm's running statistics as they were (each batch is still
    normalised by its own statistics in training mode). A technique's extra forwards then do
    not move the statistics evaluation uses: those come from the labelled batches alone, as
    without the technique, and never from strongly augmented views. Measured without this: on
    Fashion-MNIST after 18 steps, the extra forwards alone (no pseudo label kept) raised the
    test accuracy from 27% to 49%, by moving the running averages three times a step."""
    import torch

    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) · running + 0 · batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def model_input(state: TrainState, images: torch.Tensor) -> torch.Tensor:
    """A uint8 batch as the trainer feeds its own: normalised, at the training resolution."""
    from automl.functional import resize
    from automl.trainer import normalise_batch

    return resize(normalise_batch(state, images), state.train_image_size)


class DrawPerBatch:
    """A technique's random draw for each micro-batch of the current optimizer step: made
    once, and reused when ``state.closure`` recomputes the step, so a two-pass method (SAM)
    sees the same unlabelled images and pseudo labels in both passes."""

    def __init__(self):
        self._step = -1
        self._draws: dict[int, tuple] = {}  # id(batch) -> (batch, draw)

    def get(self, state: TrainState, draw):
        """``draw(state)`` for this micro-batch (``state.images``), made at most once."""
        if self._step != state.step:
            self._step, self._draws = state.step, {}
        cached = self._draws.get(id(state.images))
        if cached is not None and cached[0] is state.images:
            return cached[1]
        value = draw(state)
        self._draws[id(state.images)] = (state.images, value)
        return value
