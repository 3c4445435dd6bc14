from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def class_frequency_weights(labels: torch.Tensor, num_classes: int,
                            power: float) -> torch.Tensor:
    """Per-class weights w_c ∝ (1 / count_c)^power, scaled so Σ_c freq_c·w_c = 1 (the mean
    weight over the samples is 1, so the loss keeps its scale). A class without samples gets
    the largest weight of the others."""
    import torch

    counts = torch.bincount(labels, minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts[present].pow(-power)
    weights = weights / (counts / counts.sum() * weights).sum()
    weights[~present] = weights[present].max()
    return weights.float()


class ClassWeights(Technique):
    """Class-balanced loss: weight each class by inverse training frequency to a power.

    Helps: imbalanced training sets, by raising the recall of rare classes (trading some
    accuracy on frequent ones); no effect on balanced data. Weights have mean 1 over the
    training samples.
    Suggested: power 0.5 (square-root balancing) to 1.0 (full inverse frequency).
    Source: Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (2019);
    King & Zeng, "Logistic Regression in Rare Events Data" (2001).
    """

    name = "class_weights"
    space = {"power": FloatDistribution(0.25, 1.0)}
    defaults = {"power": 0.5}
    limits = {"power": (0.0, 4.0)}

    @hookimpl
    def build_loss(self, state):
        weights = class_frequency_weights(state.data.train.labels, state.num_classes,
                                          self.params["power"])
        state.loss_options["class_weights"] = weights.to(state.device)
