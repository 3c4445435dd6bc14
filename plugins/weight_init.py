from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    from torch import nn


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise every convolution and linear layer by ``scheme``; biases become zero.

    Kaiming: normal, fan_out, ReLU gain for convolutions (as torchvision's and timm's ResNets);
    fan_in with unit gain for linear layers, so the classifier starts with small logits.
    Xavier: Glorot uniform. Orthogonal: unit gain, rows (or columns) orthonormal.
    Normalisation layers keep their own init (timm may zero the last BN of each block).
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            is_conv = isinstance(module, nn.modules.conv._ConvNd)
            if not (is_conv or isinstance(module, nn.Linear)):
                continue
            if scheme == "kaiming" and is_conv:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
            elif scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(module.weight)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class WeightInit(Technique):
    """Weight initialisation: re-draw every conv and linear weight (Kaiming, Xavier, orthogonal).

    Biases start at zero; normalisation layers keep their own init.

    Helps: networks without normalisation, or deep ones, where the scale of the init decides
    whether signals vanish or explode; with batch norm the effect is usually small.
    Suggested: Kaiming for ReLU networks; orthogonal for very deep or normalisation-free ones.
    Source: He et al., "Delving Deep into Rectifiers" (2015); Glorot & Bengio, "Understanding
    the difficulty of training deep feedforward neural networks" (2010); Saxe et al., "Exact
    solutions to the nonlinear dynamics of learning in deep linear neural networks" (2014).
    """

    name = "weight_init"
    space = {"scheme": CategoricalDistribution(["kaiming", "xavier", "orthogonal"])}
    defaults = {"scheme": "kaiming"}

    @hookimpl(tryfirst=True)  # before surgery or loaded weights that other techniques bring
    def modify_model(self, state):
        init_weights(state.model, self.params["scheme"])
