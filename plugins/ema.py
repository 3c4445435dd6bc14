from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1−decay)·model for parameters; buffers (BN stats) are copied."""
    import torch

    with torch.no_grad():
        ema_params = [p for p in ema.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)


class EMA(Technique):
    """Exponential moving average of the weights; validation and export use the average.

    Helps: smoother, often better final weights for free, especially with high LRs and
    noisy augmentation. The decay warms up so short runs are not stuck near the init.
    Suggested: decay 0.99–0.9999 (higher for more steps).
    Source: Polyak & Juditsky (1992); Tan & Le, "EfficientNet" (2019).
    """

    name = "ema"
    space = {"decay": FloatDistribution(0.9, 0.999)}
    defaults = {"decay": 0.99}
    limits = {"decay": (0.0, 0.999999)}

    @hookimpl
    def on_train_start(self, state):
        ema = copy.deepcopy(state.model)
        ema.requires_grad_(False)
        state.extras["ema"] = ema

    @hookimpl
    def after_step(self, state):
        decay = min(self.params["decay"], (1 + state.step) / (10 + state.step))
        ema_update(state.extras["ema"], state.model, decay)

    @hookimpl
    def eval_model(self, state):
        return state.extras["ema"]
