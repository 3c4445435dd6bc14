from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from torchvision.transforms import v2

from automl.hookspecs import hookimpl
from automl.technique import Technique

#: AutoAugment's learned policies, one per dataset it was searched on.
AUTOAUGMENT_POLICIES = {
    "autoaugment_imagenet": v2.AutoAugmentPolicy.IMAGENET,
    "autoaugment_cifar10": v2.AutoAugmentPolicy.CIFAR10,
    "autoaugment_svhn": v2.AutoAugmentPolicy.SVHN,
}


def make_policy(policy: str, magnitude: int, num_ops: int) -> v2.Transform:
    """torchvision's implementation of the named automatic augmentation policy.

    ``magnitude`` and ``num_ops`` apply to RandAugment only; the others draw their own.
    """
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "randaugment":
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if policy in AUTOAUGMENT_POLICIES:
        return v2.AutoAugment(AUTOAUGMENT_POLICIES[policy])
    raise ValueError(f"unknown augmentation policy {policy!r}")


def apply_per_sample(transform: v2.Transform, images: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each image separately, so every sample draws its own ops."""
    return torch.stack([transform(image) for image in images])


class AugmentPolicy(Technique):
    """Automatic augmentation policy: TrivialAugment, RandAugment or AutoAugment.

    AutoAugment comes with the policies learned on ImageNet, CIFAR-10 and SVHN.
    Helps: medium and long schedules on natural images; each sample gets its own random
    photometric or geometric ops. Short schedules may underfit with it.
    Suggested: TrivialAugment (no parameters); RandAugment 2 ops at magnitude 5–10; the
    AutoAugment policy of the most similar dataset (SVHN for digits).
    Source: Müller & Hutter, "TrivialAugment" (2021); Cubuk et al., "RandAugment" (2020) and
    "AutoAugment" (2019).
    """

    name = "augment_policy"
    space = {
        "policy": CategoricalDistribution(["trivialaugment", "randaugment",
                                           *AUTOAUGMENT_POLICIES]),
        "magnitude": IntDistribution(1, 15),
        "num_ops": IntDistribution(1, 3),
    }
    defaults = {"policy": "trivialaugment", "magnitude": 9, "num_ops": 2}
    limits = {"magnitude": (0, 30), "num_ops": (1, 10)}

    def __init__(self, **params):
        super().__init__(**params)
        self.transform = make_policy(self.params["policy"], self.params["magnitude"],
                                     self.params["num_ops"])

    @hookimpl
    def augment_batch(self, state):
        state.images = apply_per_sample(self.transform, state.images)
