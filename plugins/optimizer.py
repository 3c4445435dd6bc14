from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


def make_optimizer(name: str, param_groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, its Nesterov variant, or AdamW; weight decay comes per group."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=0.0)
    return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, nesterov=name == "nesterov",
                           weight_decay=0.0)


class Optimizer(Technique):
    """Optimizer and base learning rate: SGD (momentum 0.9), Nesterov SGD, or AdamW.

    Helps: the base LR is the single most important setting of any recipe; SGD suits
    convolutional nets with a high LR, AdamW suits transformers and short schedules.
    Suggested: SGD lr 0.01–0.3; AdamW lr 3e-4–3e-3 (searched on one log scale).
    Source: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019); Sutskever
    et al., "On the importance of initialization and momentum" (2013).
    """

    name = "optimizer"
    optional = False
    space = {
        "name": CategoricalDistribution(["sgd", "nesterov", "adamw"]),
        "lr": FloatDistribution(3e-4, 0.3, log=True),
    }
    defaults = {"name": "sgd", "lr": 0.05}
    limits = {"lr": (1e-8, 10.0)}

    @hookimpl
    def build_optimizer(self, state):
        return make_optimizer(self.params["name"], state.param_groups, self.params["lr"])
