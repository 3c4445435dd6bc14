from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl import autoaugment_policies
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

#: AutoAugment's learned policies, one per dataset it was searched on.
AUTOAUGMENT_POLICIES = {f"autoaugment_{name}": name
                        for name in autoaugment_policies.AUTOAUGMENT_POLICIES}


def apply_policy(images: torch.Tensor, policy: str, magnitude: int, num_ops: int,
                 generator: torch.Generator) -> torch.Tensor:
    """The named automatic augmentation policy on a uint8 batch, every sample drawing its own
    ops from ``generator``.

    ``magnitude`` and ``num_ops`` apply to RandAugment only; the others draw their own.
    """
    from automl import augment

    if policy == "trivialaugment":
        return augment.trivial_augment(images, generator)
    if policy == "randaugment":
        return augment.rand_augment(images, num_ops, magnitude, generator)
    if policy in AUTOAUGMENT_POLICIES:
        return augment.auto_augment(images, AUTOAUGMENT_POLICIES[policy], generator)
    raise ValueError(f"unknown augmentation policy {policy!r}")


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

    @hookimpl
    def augment_batch(self, state):
        state.images = apply_policy(state.images, self.params["policy"],
                                    self.params["magnitude"], self.params["num_ops"],
                                    state.generator)
