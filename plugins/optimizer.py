from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique, When

if TYPE_CHECKING:
    import torch

#: Our choice -> (timm optimizer name, extra arguments). In timm "sgd" is Nesterov SGD and
#: "momentum" is plain momentum SGD; both get momentum 0.9 from timm's factory.
TIMM_OPTIMIZERS: dict[str, tuple[str, dict]] = {
    "sgd": ("momentum", {}),
    "nesterov": ("sgd", {}),
    "adamw": ("adamw", {}),
    # LAMB's layer-wise trust ratio on every layer, as in the paper (timm's default would
    # skip it where weight decay is 0, i.e. everywhere when weight decay is off).
    "lamb": ("lamb", {"always_adapt": True}),
    "rmsprop": ("rmsprop", {}),  # timm defaults: alpha 0.9, momentum 0.9
}


def make_optimizer(name: str, param_groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """The named optimizer from timm's factory; weight decay comes per group (global 0)."""
    from timm.optim import create_optimizer_v2

    opt, kwargs = TIMM_OPTIMIZERS[name]
    return create_optimizer_v2(param_groups, opt=opt, lr=lr, weight_decay=0.0, **kwargs)


class Optimizer(Technique):
    """Optimizer and base learning rate: SGD, Nesterov SGD, AdamW, LAMB or RMSProp.

    Helps: the base LR is the single most important setting of any recipe; SGD suits
    convolutional nets with a high LR, AdamW suits transformers and short schedules, LAMB
    large batches, RMSProp the EfficientNet/MobileNet recipes. Built with timm's optimizer
    factory: SGD variants use momentum 0.9, RMSProp alpha 0.9 and momentum 0.9; LAMB clips
    the global gradient norm at 1.
    Suggested: SGD lr 0.01–0.5; AdamW lr 3e-4–1e-2; LAMB lr 1e-3–2e-2; RMSProp lr
    1e-4–3e-3 (at batch 128; each optimizer is searched over its own range, named
    ``optimizer.lr[sgd]`` and so on in the study, so the sampler learns each apart).
    The LR is multiplied by ``state.lr_scale`` (the batch-size technique's scaling rule).
    Source: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019); Sutskever
    et al., "On the importance of initialization and momentum" (2013); You et al., "Large
    Batch Optimization for Deep Learning" (LAMB, 2020); Tieleman & Hinton, RMSProp (2012).
    """

    name = "optimizer"
    optional = False
    space = {
        "name": CategoricalDistribution(list(TIMM_OPTIMIZERS)),
        "lr": FloatDistribution(1e-4, 1.0, log=True),
    }
    # Per-family ranges at batch 128: SGD around Goyal et al.'s 0.1 × batch/256 (BN nets
    # take up to ~0.5 in short schedules); Adam-family around their 1e-3 default; LAMB's
    # trust ratio tolerates about 10× that; RMSProp (timm: alpha 0.9, momentum 0.9) ~1e-3.
    conditions = {"lr": When("name", {
        "sgd": FloatDistribution(0.01, 0.5, log=True),
        "nesterov": FloatDistribution(0.01, 0.5, log=True),
        "adamw": FloatDistribution(3e-4, 1e-2, log=True),
        "lamb": FloatDistribution(1e-3, 2e-2, log=True),
        "rmsprop": FloatDistribution(1e-4, 3e-3, log=True),
    })}
    defaults = {"name": "sgd", "lr": 0.05}
    limits = {"lr": (1e-8, 10.0)}

    @hookimpl
    def build_optimizer(self, state):
        return make_optimizer(self.params["name"], state.param_groups,
                              self.params["lr"] * state.lr_scale)
