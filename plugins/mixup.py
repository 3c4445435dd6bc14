from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.functional import per_sample, sample_beta, soft_targets
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each sample with a random partner; every sample draws its own Beta(α, α) weight."""
    import torch

    n = len(images)
    lam = sample_beta(alpha, n, generator).to(images.dtype)
    partner = torch.randperm(n, device=images.device, generator=generator)
    mixed = per_sample(lam) * images + per_sample(1 - lam) * images[partner]
    return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]


class Mixup(Technique):
    """Mixup: train on convex blends of image pairs and of their labels.

    Helps: regularisation and calibration on medium/long schedules; often too strong for
    very short training.
    Suggested: alpha 0.1–0.4 (ImageNet), up to 1.0 (CIFAR).
    Source: Zhang et al., "mixup: Beyond Empirical Risk Minimization" (2018).
    """

    name = "mixup"
    space = {"alpha": FloatDistribution(0.1, 1.0)}
    defaults = {"alpha": 0.2}
    limits = {"alpha": (1e-3, 10.0)}

    @hookimpl
    def on_batch(self, state):
        targets = soft_targets(state.targets, state.num_classes)
        state.images, state.targets = mixup(state.images, targets, self.params["alpha"],
                                            state.generator)
