from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution

from automl.functional import replace_modules
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    from torch import nn


def divisor_at_most(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` not above ``groups`` (GroupNorm needs one)."""
    return next(g for g in range(min(groups, channels), 0, -1) if channels % g == 0)


def group_norm_like(bn: nn.BatchNorm2d, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (clamped to a divisor of the channels) in place of
    ``bn``: its affine weight and bias copied, a timm BatchNormAct2d's drop and act kept."""
    import torch
    from timm.layers.norm_act import GroupNormAct
    from torch import nn

    channels = bn.num_features
    groups = divisor_at_most(channels, groups)
    if hasattr(bn, "act"):  # timm BatchNormAct2d (or a ghost BN that replaced one)
        norm = GroupNormAct(channels, groups, eps=bn.eps, affine=bn.affine, apply_act=False)
        norm.drop, norm.act = bn.drop, bn.act
    else:
        norm = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            norm.weight.copy_(bn.weight)
            norm.bias.copy_(bn.bias)
    return norm.train(bn.training)


def to_group_norm(model: nn.Module, groups: int) -> int:
    """Swap every BatchNorm2d (subclasses included) of ``model`` for a GroupNorm with
    ``groups`` groups; returns how many."""
    from torch import nn

    return replace_modules(model, lambda m: isinstance(m, nn.BatchNorm2d),
                           lambda bn: group_norm_like(bn, groups))


class NormLayer(Technique):
    """Batch norm replaced by group norm or layer norm (statistics per sample, not per batch).

    Helps: small or uneven batches and per-sample training noise (BN depends on the batch);
    usually a little below BN at ordinary batch sizes. "layer" is GroupNorm with one group
    (normalises over C, H, W). Off means batch norm.
    Suggested: group with 8–16 groups (32 in the paper, for wide networks).
    Source: Wu & He, "Group Normalization" (2018); Ba et al., "Layer Normalization" (2016).
    """

    name = "norm_layer"
    space = {"kind": CategoricalDistribution(["group", "layer"]),
             "groups": CategoricalDistribution([4, 8, 16])}
    defaults = {"kind": "group", "groups": 8}
    conflicts = {"ghost_batch_norm": "norm_layer replaces every batch norm, ghost ones "
                 "included, so ghost_batch_norm would have no effect"}

    @hookimpl(trylast=True)  # after other surgery, so a ghost BN is replaced too
    def modify_model(self, state):
        groups = self.params["groups"] if self.params["kind"] == "group" else 1
        if not to_group_norm(state.model, groups):
            raise ValueError(f"norm_layer: model {state.recipe.model} has no BatchNorm2d "
                             "layers to replace")
