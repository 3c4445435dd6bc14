"""Small helpers shared by several techniques (and the core): tensors, module surgery, and the
LR scaling rule.

torch is imported inside the tensor helpers, so a technique module can import this one while
``automl techniques`` and ``--help`` still start without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def soft_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices as one-hot float rows; soft rows pass through unchanged.

    A scatter into rows of a fixed width rather than ``F.one_hot``, which reads the indices'
    range back to the host on every call (on a CPU; the training loop's sync test sees it).
    """
    import torch

    if targets.dim() == 2:
        return targets
    rows = torch.zeros(len(targets), num_classes, device=targets.device)
    return rows.scatter_(1, targets[:, None], 1.0)


def sample_beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(α, α) from ``generator`` (on its device), via two Gamma draws."""
    import torch

    concentration = torch.full((n,), float(alpha), device=generator.device)
    a = torch._standard_gamma(concentration, generator=generator)
    b = torch._standard_gamma(concentration, generator=generator)
    return a / (a + b).clamp_min(torch.finfo(a.dtype).tiny)


def per_sample(mask: torch.Tensor) -> torch.Tensor:
    """Reshape an N-vector so it broadcasts over N×C×H×W images."""
    return mask.view(-1, 1, 1, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images resized to size×size (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = size < images.shape[-1]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink).contiguous(memory_format=torch.channels_last)


#: LR multiplier for a batch ``ratio`` times the reference batch, by rule: linear (Goyal et
#: al., 2017), square root (Krizhevsky, 2014; Hoffer et al., 2017) or none.
LR_SCALING_RULES = {"linear": lambda ratio: ratio, "sqrt": math.sqrt, "none": lambda ratio: 1.0}


def replace_modules(model: torch.nn.Module, wanted: Callable[[torch.nn.Module], bool],
                    replacement: Callable[[torch.nn.Module], torch.nn.Module]) -> int:
    """Swap, in place, every submodule of ``model`` that ``wanted`` accepts for
    ``replacement(module)``; how many. Module surgery (batch norm to ghost or group norm)."""
    targets = [(name, m) for name, m in model.named_modules() if name and wanted(m)]
    for name, module in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, replacement(module))
    return len(targets)


def lr_scale(rule: str, batch: int, reference: int) -> float:
    """How much to multiply the LR by when training at ``batch`` instead of ``reference``."""
    return LR_SCALING_RULES[rule](batch / reference)
