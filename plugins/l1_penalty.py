from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    """Sum of |w| over the trainable weight matrices and kernels (ndim > 1): biases and
    normalisation scales are left out, as is usual for weight decay."""
    import torch

    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()


class L1Penalty(Technique):
    """L1 penalty: add strength × Σ|w| over the weights to the training loss.

    Pulls every weight toward zero at the same rate, where L2 decay pulls in proportion to
    its size: small weights end near zero (sparser, easier to prune networks). The reported
    training loss includes the penalty.
    Helps: over-parameterised models on small data, and as a step before pruning.
    Suggested: strength 1e-6–1e-4; the penalty grows with the number of weights, so
    larger models need smaller strengths.
    Source: Tibshirani, "Regression shrinkage and selection via the lasso" (1996).
    """

    name = "l1_penalty"
    space = {"strength": FloatDistribution(1e-6, 1e-3, log=True)}
    defaults = {"strength": 1e-5}
    limits = {"strength": (0.0, 1.0)}

    @hookimpl
    def after_loss(self, state):
        state.loss = state.loss + self.params["strength"] * l1_norm(state.model)
