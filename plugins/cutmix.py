from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.functional import sample_beta, soft_targets
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def cutmix(images: torch.Tensor, targets: torch.Tensor, alpha: float,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box from a partner image into each sample; labels mix by box area."""
    import torch

    n, _, h, w = images.shape
    dev = images.device
    lam = sample_beta(alpha, n, generator)
    cut = torch.sqrt(1 - lam)
    cy = torch.rand(n, device=dev, generator=generator) * h
    cx = torch.rand(n, device=dev, generator=generator) * w
    y0, y1 = (cy - cut * h / 2).clamp(0, h), (cy + cut * h / 2).clamp(0, h)
    x0, x1 = (cx - cut * w / 2).clamp(0, w), (cx + cut * w / 2).clamp(0, w)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    box = ((ys >= y0.round()[:, None, None]) & (ys < y1.round()[:, None, None])
           & (xs >= x0.round()[:, None, None]) & (xs < x1.round()[:, None, None]))
    partner = torch.randperm(n, device=dev, generator=generator)
    mixed = torch.where(box[:, None], images[partner], images)
    kept = 1 - box.flatten(1).float().mean(1)  # the label weight is the true kept area
    mixed_targets = kept[:, None] * targets + (1 - kept[:, None]) * targets[partner]
    return mixed, mixed_targets


class CutMix(Technique):
    """CutMix: replace a random box of each image with a patch of another, mixing labels.

    Helps: localisation-sensitive regularisation on natural images; strong on CIFAR and
    ImageNet with medium/long schedules.
    Suggested: alpha 1.0.
    Source: Yun et al., "CutMix" (2019).
    """

    name = "cutmix"
    space = {"alpha": FloatDistribution(0.1, 1.0)}
    defaults = {"alpha": 1.0}
    limits = {"alpha": (1e-3, 10.0)}

    @hookimpl
    def on_batch(self, state):
        targets = soft_targets(state.targets, state.num_classes)
        state.images, state.targets = cutmix(state.images, targets, self.params["alpha"],
                                             state.generator)
