from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def decay_groups(model: torch.nn.Module, weight_decay: float,
                 exclude_norm_bias: bool) -> list[dict]:
    """Parameter groups with decay, optionally none on biases and norm weights (ndim <= 1)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if exclude_norm_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class WeightDecay(Technique):
    """Weight decay: shrink weights toward zero each step (L2 for SGD, decoupled for AdamW).

    Helps: almost always; the main regulariser of long schedules. Excluding biases and
    normalisation weights usually helps a little more.
    Suggested: 5e-5–5e-4 for SGD, 0.01–0.1 for AdamW.
    Source: Krogh & Hertz (1992); Loshchilov & Hutter (2019).
    """

    name = "weight_decay"
    space = {
        # From SGD's 5e-5 to AdamW's 0.1; below 1e-5 the decay does nothing in any budget.
        "value": FloatDistribution(1e-5, 1e-1, log=True),
        "exclude_norm_bias": CategoricalDistribution([True, False]),
    }
    defaults = {"value": 5e-4, "exclude_norm_bias": True}
    limits = {"value": (0.0, 1.0)}

    @hookimpl
    def configure_param_groups(self, state):
        state.param_groups = decay_groups(state.model, self.params["value"],
                                          self.params["exclude_norm_bias"])
