"""Model creation: any timm model by name, plus small networks for 8–32 px images.

The small networks are registered in timm's own registry, so ``timm.create_model`` (and every
tool built on it) knows them by name and passes ``drop_rate`` / ``drop_path_rate`` through.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from timm.models import register_model
from torch import nn

__all__ = ["SmallResNet", "automl_resnet8", "automl_resnet14"]


class _Block(nn.Module):
    """Pre-activation-free basic residual block with stochastic depth on the residual."""

    def __init__(self, cin: int, cout: int, stride: int, drop_path: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(self.shortcut(x) + self.drop_path(out))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: 3×3 stem, three stages (stride 1, 2, 2), global pooling.

    Global pooling makes it resolution-agnostic, so inference resize and FixRes work.
    """

    def __init__(self, widths=(32, 64, 128), depths=(1, 1, 1), num_classes: int = 10,
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 **_: object):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        total, index, cin = sum(depths), 0, widths[0]
        blocks = []
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for i in range(depth):
                rate = drop_path_rate * index / max(total - 1, 1)
                blocks.append(_Block(cin, width, 2 if stage > 0 and i == 0 else 1, rate))
                cin, index = width, index + 1
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's API: techniques find the embedding through it)."""
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def automl_resnet8(pretrained: bool = False, **kwargs) -> SmallResNet:
    """Residual net of 8 conv layers (widths 16/32/64): ~0.5 s per digits epoch on 2 CPU cores."""
    return SmallResNet(widths=(16, 32, 64), depths=(1, 1, 1), **kwargs)


@register_model
def automl_resnet14(pretrained: bool = False, **kwargs) -> SmallResNet:
    """Residual net of 14 conv layers (widths 64/128/256) for 28–32 px data on a GPU."""
    return SmallResNet(widths=(64, 128, 256), depths=(2, 2, 2), **kwargs)
