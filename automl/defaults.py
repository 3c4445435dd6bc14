"""The core's own behaviour, written as a plugin of ``trylast`` defaults any technique overrides.

Registered first in every trial's manager, so a technique implementing the same
``firstresult`` hook wins without the core naming it.
"""

from __future__ import annotations

from typing import Any

import timm
import torch

import automl.models  # noqa: F401  (registers the small networks in timm)
from automl.hookspecs import hookimpl
from automl.losses import make_loss
from automl.state import TrainState


class CoreDefaults:
    """timm model, plain SGD at a constant LR, shuffled epochs, the composed classification loss
    (cross-entropy unless loss techniques set options), evaluate the trained weights."""

    @hookimpl(trylast=True)
    def build_model(self, state: TrainState, kwargs: dict[str, Any]) -> torch.nn.Module:
        return timm.create_model(state.recipe.model, num_classes=state.num_classes,
                                 in_chans=state.in_chans, **kwargs)

    @hookimpl(trylast=True)
    def configure_param_groups(self, state: TrainState) -> None:
        if not state.param_groups:
            state.param_groups = [{"params": [p for p in state.model.parameters()
                                              if p.requires_grad]}]

    @hookimpl(trylast=True)
    def build_optimizer(self, state: TrainState) -> torch.optim.Optimizer:
        return torch.optim.SGD(state.param_groups, lr=0.05 * state.lr_scale, momentum=0.9)

    @hookimpl(trylast=True)
    def build_loss(self, state: TrainState) -> None:
        if state.loss_fn is None:
            state.loss_fn = make_loss(state.loss_options)

    @hookimpl(trylast=True)
    def epoch_order(self, state: TrainState) -> torch.Tensor:
        return torch.randperm(len(state.data.train), generator=state.generator,
                              device=state.device)

    @hookimpl(trylast=True)
    def eval_model(self, state: TrainState) -> torch.nn.Module:
        return state.model
