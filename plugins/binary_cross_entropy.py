from __future__ import annotations

from automl.hookspecs import hookimpl
from automl.technique import Technique


class BinaryCrossEntropy(Technique):
    """Binary cross-entropy: one sigmoid per class instead of a softmax over the classes.

    Helps: training on mixup / cutmix soft targets, where each class present in the mix is its
    own yes/no target (the "ResNet strikes back" recipes); with focal loss on it is the sigmoid
    focal loss.
    Suggested: with mixup or cutmix on longer schedules (no parameters: on or off).
    Source: Wightman et al., "ResNet strikes back" (2021); Beyer et al., "Are we done with
    ImageNet?" (2020).
    """

    name = "binary_cross_entropy"

    @hookimpl
    def build_loss(self, state):
        state.loss_options["binary"] = True
