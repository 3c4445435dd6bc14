from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

    from automl.data import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Per-pixel std is floored at this fraction of the channel's overall std: pixels that are
#: (nearly) constant in training, like empty borders, must not blow up when a crop or a test
#: image puts content there.
STD_FLOOR = 0.25

_PIXEL_STATS: dict[int, tuple[Split, torch.Tensor, torch.Tensor]] = {}
_LOCK = threading.Lock()


def pixel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and (population) std images (C×H×W) of uint8 ``images`` / 255.

    Float64 sums over chunks, so large datasets need no float copy of the whole set.
    """
    import torch

    n, c, h, w = images.shape
    total = torch.zeros(c, h, w, dtype=torch.float64)
    total_sq = torch.zeros(c, h, w, dtype=torch.float64)
    chunk = max(1, (1 << 22) // (c * h * w))
    for start in range(0, n, chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(0)
        total_sq += x.square().sum(0)
    mean = total / n
    var = (total_sq / n - mean.square()).clamp_min(0.0)
    channel_var = (total_sq.sum((1, 2)) / (n * h * w)
                   - (total.sum((1, 2)) / (n * h * w)).square()).clamp_min(0.0)
    floor = (STD_FLOOR * channel_var.sqrt()).clamp_min(1 / 255).view(c, 1, 1)
    return mean.float(), torch.maximum(var.sqrt(), floor).float()


def cached_pixel_stats(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pixel_stats` of a split, computed once per process (the split stays referenced,
    so its id cannot be reused by another object)."""
    from automl.data import stats_sample

    with _LOCK:
        if id(split) not in _PIXEL_STATS:
            _PIXEL_STATS[id(split)] = (split, *pixel_stats(stats_sample(split)))
        _, mean, std = _PIXEL_STATS[id(split)]
    return mean, std


def constant_stats(stats: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fixed per-channel mean and std: ImageNet's (channel-averaged unless RGB) or 0.5."""
    if stats == "unit":
        return (0.5,) * in_chans, (0.5,) * in_chans
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return ((sum(IMAGENET_MEAN) / 3,) * in_chans, (sum(IMAGENET_STD) / 3,) * in_chans)


class InputNorm(Technique):
    """Input normalisation: per-pixel mean/std images, ImageNet constants, or [-1, 1] scaling.

    Without it, inputs use the per-channel mean and std of the training split. "pixel"
    subtracts the mean image and divides by the std image of the training split (std
    floored so near-constant pixels are not amplified); "imagenet" uses the usual ImageNet
    constants (their average for non-RGB data); "unit" maps [0, 1] to [-1, 1].
    Helps: "pixel" on centred, aligned images (digits, faces); "imagenet" when fine-tuning
    ImageNet weights. On most data the effect is small.
    Suggested: leave it off unless images are aligned or weights are pretrained.
    Source: He et al., "Deep Residual Learning for Image Recognition" (2016) (per-pixel mean);
    LeCun et al., "Efficient BackProp" (1998).
    """

    name = "input_norm"
    space = {"stats": CategoricalDistribution(["pixel", "imagenet", "unit"])}
    defaults = {"stats": "pixel"}

    @hookimpl
    def configure_training(self, state):
        if self.params["stats"] == "pixel":
            state.input_mean, state.input_std = cached_pixel_stats(state.data.train)
        else:
            state.input_mean, state.input_std = constant_stats(self.params["stats"],
                                                               state.in_chans)
