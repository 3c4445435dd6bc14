from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.functional import per_sample
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def random_hflip(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``, independently per sample."""
    import torch

    flip = torch.rand(len(images), device=images.device, generator=generator) < p
    return torch.where(per_sample(flip), images.flip(-1), images)


class Flip(Technique):
    """Random horizontal flip of each training image.

    Helps: natural images whose classes are mirror-symmetric (CIFAR, ImageNet). Hurts where
    left and right matter (digits, text).
    Suggested: p = 0.5.
    Source: Krizhevsky et al., "ImageNet Classification with Deep CNNs" (2012).
    """

    name = "flip"
    space = {"p": FloatDistribution(0.1, 0.5)}
    defaults = {"p": 0.5}
    limits = {"p": (0.0, 1.0)}

    @hookimpl(tryfirst=True)  # crop and flip before policies, as their papers do
    def augment_batch(self, state):
        state.images = random_hflip(state.images, self.params["p"], state.generator)
