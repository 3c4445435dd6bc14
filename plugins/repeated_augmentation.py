from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def repeated_order(n: int, repeats: int, generator: torch.Generator) -> torch.Tensor:
    """An epoch of ``n`` indices: ceil(n / repeats) random distinct samples, each repeated
    ``repeats`` times in a row (the last one maybe fewer), so an epoch keeps its length."""
    import torch

    picked = torch.randperm(n, device=generator.device, generator=generator)
    picked = picked[:(n + repeats - 1) // repeats]
    return picked.repeat_interleave(repeats)[:n]


class RepeatedAugmentation(Technique):
    """Repeated augmentation: each batch holds several copies of fewer images.

    Every copy goes through the per-sample augmentations on its own, so the batch shows
    different views of the same image; an epoch keeps its number of batches but sees about
    1/repeats of the images (different ones each epoch).
    Helps: large batches and strong augmentation (DeiT-style recipes); may hurt short
    schedules, which see fewer distinct images.
    Suggested: 3 repeats (DeiT); needs per-sample augmentation (flip, crop, a policy) on.
    Source: Hoffer et al., "Augment your batch: better training with larger batches" (2020);
    Berman et al., "MultiGrain" (2019).
    """

    name = "repeated_augmentation"
    space = {"repeats": IntDistribution(2, 4)}
    defaults = {"repeats": 3}
    limits = {"repeats": (1, 64)}

    @hookimpl
    def epoch_order(self, state):
        return repeated_order(len(state.data.train), self.params["repeats"], state.generator)
