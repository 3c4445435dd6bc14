from __future__ import annotations

import math
from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

AREA_MIN = 0.02  # smallest erased fraction of the image (the paper's s_l)
ASPECT_RANGE = (0.3, 3.3)  # height / width of the box, drawn log-uniformly (the paper's r_1, 1/r_1)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    return low + (high - low) * torch.rand(n, device=generator.device, generator=generator)


def random_erase(images: torch.Tensor, p: float, area_max: float, fill: str,
                 generator: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per sample, overwrite one random box of the image.

    Each sample draws its own area (a fraction in [AREA_MIN, area_max] of the image), aspect
    ratio and position; boxes taller or wider than the image are clipped to it, which only
    makes them smaller. ``fill`` "random" writes N(0, 1) noise per pixel, "zero" writes 0: the
    batch is already normalised, so both mean "typical values", as in timm.
    """
    import torch

    n, _, h, w = images.shape
    dev = images.device
    erase = torch.rand(n, device=dev, generator=generator) < p
    area = _uniform(AREA_MIN, area_max, n, generator) * (h * w)
    log_aspect = _uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]), n, generator)
    aspect = log_aspect.exp()
    box_h = (area * aspect).sqrt().round().clamp(1, h)
    box_w = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, device=dev, generator=generator) * (h - box_h + 1)).floor()
    left = (torch.rand(n, device=dev, generator=generator) * (w - box_w + 1)).floor()
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]))
    mask = (inside & erase[:, None, None]).unsqueeze(1)  # N×1×H×W, broadcast over channels
    if fill == "random":
        noise = torch.randn(images.shape, device=dev, dtype=images.dtype, generator=generator)
        return torch.where(mask, noise, images)
    return images.masked_fill(mask, 0.0)


class RandomErasing(Technique):
    """Random erasing: overwrite one random rectangle of some training images.

    Helps: robustness to occlusion and less reliance on one image region; complements
    crops and flips. Runs on the normalised batch before mixup and cutmix.
    Suggested: p 0.25 with random fill (timm's ImageNet recipes); p up to 0.5 on CIFAR.
    Source: Zhong et al., "Random Erasing Data Augmentation" (2020).
    """

    name = "random_erasing"
    space = {
        "p": FloatDistribution(0.05, 0.5),
        "area_max": FloatDistribution(0.1, 0.4),
        "fill": CategoricalDistribution(["random", "zero"]),
    }
    defaults = {"p": 0.25, "area_max": 0.33, "fill": "random"}
    limits = {"p": (0.0, 1.0), "area_max": (AREA_MIN, 1.0)}

    @hookimpl(tryfirst=True)  # erase the image itself, before mixing blends it with another
    def on_batch(self, state):
        state.images = random_erase(state.images, self.params["p"], self.params["area_max"],
                                    self.params["fill"], state.generator)
