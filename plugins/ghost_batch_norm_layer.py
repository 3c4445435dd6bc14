"""The ghost batch-norm layer and the surgery that puts it in a model.

Apart from the ``ghost_batch_norm`` technique (which imports this module when it trains), so
that listing techniques does not import torch or timm.
"""

from __future__ import annotations

import torch
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from automl.functional import replace_modules


def ghost_batch_norm(x: torch.Tensor, virtual_batch: int, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise each run of ``virtual_batch`` samples of ``x`` (N×C×H×W) by its own statistics.

    Returns the output and, for the running statistics, the per-channel mean and unbiased
    variance averaged over the chunks (weighted by their sizes). Statistics are float32 even
    under autocast; a ragged last chunk is normalised on its own.
    """
    n = x.shape[0]
    full = n - n % virtual_batch
    parts = [(x[:full].unflatten(0, (full // virtual_batch, virtual_batch)), full)] if full else []
    if full < n:
        parts.append((x[full:].unsqueeze(0), n - full))
    outs, means, variances = [], [], []
    for chunks, count in parts:  # chunks: k×v×C×H×W
        chunks32 = chunks.float()
        var, mean = torch.var_mean(chunks32, dim=(1, 3, 4), correction=0, keepdim=True)
        out = (chunks32 - mean) * torch.rsqrt(var + eps)
        outs.append(out.flatten(0, 1))
        per_chunk = chunks.shape[1] * chunks.shape[3] * chunks.shape[4]
        unbiased = var.detach() * (per_chunk / max(per_chunk - 1, 1))
        means.append(mean.detach().flatten(1).mean(0) * count)
        variances.append(unbiased.flatten(1).mean(0) * count)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if weight is not None:
        out = out * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return out.to(x.dtype), sum(means) / n, sum(variances) / n


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises training batches in virtual chunks ("ghost batches").

    Same parameters and buffers as BatchNorm2d (its state dict loads into BN and back); eval
    and batches no larger than one chunk behave exactly like BN. ``drop`` and ``act`` keep the
    activation of a replaced timm BatchNormAct2d (identity otherwise).
    """

    def __init__(self, num_features: int, virtual_batch: int, *, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, drop: nn.Module | None = None,
                 act: nn.Module | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.virtual_batch = virtual_batch
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > self.virtual_batch:
            x = self._ghost_forward(x)
        else:
            x = super().forward(x)
        return self.act(self.drop(x))

    def _ghost_forward(self, x: torch.Tensor) -> torch.Tensor:
        out, mean, var = ghost_batch_norm(x, self.virtual_batch, self.weight, self.bias,
                                          self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (self.momentum if self.momentum is not None
                          else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var, factor)
        return out

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, virtual_batch: int) -> GhostBatchNorm2d:
        """A ghost copy of ``bn`` with its parameters, buffers and (timm) activation."""
        ghost = cls(bn.num_features, virtual_batch, eps=bn.eps, momentum=bn.momentum,
                    affine=bn.affine, track_running_stats=bn.track_running_stats,
                    drop=getattr(bn, "drop", None), act=getattr(bn, "act", None))
        ghost.load_state_dict(bn.state_dict())
        return ghost.train(bn.training)


def to_ghost_batch_norm(model: nn.Module, virtual_batch: int) -> int:
    """Swap every plain BatchNorm2d / timm BatchNormAct2d of ``model`` in place; returns how many
    (subclasses with other behaviour, such as frozen BN, are left alone)."""
    return replace_modules(model, lambda m: type(m) in (nn.BatchNorm2d, BatchNormAct2d),
                           lambda bn: GhostBatchNorm2d.from_batch_norm(bn, virtual_batch))
