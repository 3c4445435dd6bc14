from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def random_translate(images: torch.Tensor, padding: int, mode: str,
                     generator: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` pixels and cut a random same-size window from each image."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = images.shape
    padding = min(padding, h - 1, w - 1) if mode == "reflect" else padding
    padded = F.pad(images.float() if mode == "reflect" else images,
                   (padding,) * 4, mode=mode).to(images.dtype)
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class RandomCrop(Technique):
    """Random crop with padding (random translation) of each training image.

    Helps: nearly every small-image task; the standard CIFAR augmentation.
    Suggested: padding of 1/8 of the image side (4 px at 32 px), reflect padding.
    Source: Krizhevsky et al. (2012); He et al., "Deep Residual Learning" (2016).
    """

    name = "random_crop"
    space = {
        "padding": IntDistribution(1, 4),
        "padding_mode": CategoricalDistribution(["reflect", "constant"]),
    }
    defaults = {"padding": 2, "padding_mode": "reflect"}
    limits = {"padding": (0, 64)}

    @hookimpl(tryfirst=True)  # crop and flip before policies, as their papers do
    def augment_batch(self, state):
        state.images = random_translate(state.images, self.params["padding"],
                                        self.params["padding_mode"], state.generator)
