"""The test-time augmentation wrapper: the evaluated model's logits averaged over views.

Apart from the ``test_time_augmentation`` technique (which imports this module when it
evaluates), so that listing techniques does not import torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from automl.model_file import EvalWrapper


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` (N×C×H×W float) moved ``dy`` pixels down and ``dx`` right, the edge pixels
    repeated into the gap (no black border the model never saw at that place)."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images, (pad,) * 4, mode="replicate")
    h, w = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def views(images: torch.Tensor, flip: bool, shift: int) -> list[torch.Tensor]:
    """The batch, its left-right mirror when ``flip``, and when ``shift`` each of those moved
    by ``shift`` pixels right, left, down and up: 2, 5 or 10 views."""
    base = [images, images.flip(-1)] if flip else [images]
    if not shift:
        return base
    moves = [(0, shift), (0, -shift), (shift, 0), (-shift, 0)]
    return base + [shifted(view, dy, dx) for view in base for dy, dx in moves]


class ViewAverage(EvalWrapper):
    """``module``'s logits averaged over :func:`views` of each batch (one forward per view,
    so a batch costs no more memory than without it), summed in float32 (under autocast the
    module's own are bfloat16)."""

    technique = "test_time_augmentation"

    def __init__(self, module: nn.Module, flip: bool, shift: int):
        super().__init__(module)
        self.flip, self.shift = flip, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batches = views(images, self.flip, self.shift)
        total = self.module(batches[0]).float()
        for batch in batches[1:]:
            total = total + self.module(batch).float()
        return total / len(batches)

    def extra_repr(self) -> str:
        return f"flip={self.flip}, shift={self.shift}"
