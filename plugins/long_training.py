from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


def scaled_epochs(epochs: int, multiplier: float) -> int:
    """``epochs`` × ``multiplier``, rounded, at least 1."""
    return max(1, round(epochs * multiplier))


class LongTraining(Technique):
    """Long training: multiply the recipe's epochs (the LR schedule stretches with them).

    Helps: strong regularisation (mixup, cutmix, heavy augmentation) often needs longer
    schedules to pay off; costs proportionally more compute. The search's pruning budget
    grows with the largest multiplier in the space.
    Suggested: multiplier 1.5–3.
    Source: Wightman et al., "ResNet strikes back: An improved training procedure in timm"
    (2021).
    """

    name = "long_training"
    space = {"multiplier": FloatDistribution(1.0, 3.0, step=0.5)}
    defaults = {"multiplier": 2.0}
    limits = {"multiplier": (1.0, 20.0)}

    @classmethod
    def max_epoch_factor(cls, params: dict[str, Any]) -> float:
        multiplier = params["multiplier"]
        if isinstance(multiplier, CategoricalDistribution):
            return max(multiplier.choices)
        return multiplier.high if isinstance(multiplier, BaseDistribution) else multiplier

    @hookimpl
    def configure_training(self, state):
        state.epochs = scaled_epochs(state.epochs, self.params["multiplier"])
