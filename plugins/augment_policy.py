from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from torchvision.transforms import v2

from automl.hookspecs import hookimpl
from automl.technique import Technique


def make_policy(policy: str, magnitude: int) -> v2.Transform:
    """torchvision's implementation of the named automatic augmentation policy."""
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=magnitude)
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)


def apply_per_sample(transform: v2.Transform, images: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each image separately, so every sample draws its own ops."""
    return torch.stack([transform(image) for image in images])


class AugmentPolicy(Technique):
    """Automatic augmentation policy: TrivialAugment, RandAugment or AutoAugment (CIFAR-10).

    Helps: medium and long schedules on natural images; each sample gets its own random
    photometric or geometric op. Short schedules may underfit with it.
    Suggested: TrivialAugment (no parameters); RandAugment magnitude 5–10.
    Source: Müller & Hutter, "TrivialAugment" (2021); Cubuk et al., "RandAugment" (2020) and
    "AutoAugment" (2019).
    """

    name = "augment_policy"
    space = {
        "policy": CategoricalDistribution(["trivialaugment", "randaugment", "autoaugment"]),
        "magnitude": IntDistribution(1, 15),
    }
    defaults = {"policy": "trivialaugment", "magnitude": 9}
    limits = {"magnitude": (0, 30)}

    def __init__(self, **params):
        super().__init__(**params)
        self.transform = make_policy(self.params["policy"], self.params["magnitude"])

    @hookimpl
    def augment_batch(self, state):
        state.images = apply_per_sample(self.transform, state.images)
