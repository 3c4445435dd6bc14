"""Batch norm whose training statistics are the global batch's, across data-parallel ranks.

Apart from the ``sync_batch_norm`` technique (which imports this module when it trains), so
that listing techniques does not import torch or timm. On CUDA the technique uses PyTorch's
own ``nn.SyncBatchNorm`` (timm's ``SyncBatchNormAct`` for a ``BatchNormAct2d``); PyTorch's
refuses CPU tensors, so on the CPU (gloo) :class:`SyncBatchNorm2d` does the same job.
"""

from __future__ import annotations

import copy

import torch
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.norm_act import convert_sync_batchnorm as timm_convert_sync_batchnorm
from torch import nn

from automl.distributed import world
from automl.functional import replace_modules


def _ranks() -> int:
    """Ranks whose batches are one batch now (1 without a process group, or in a stage that
    trains alone: :func:`automl.distributed.one_process`)."""
    return world().size


def global_batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` (N×C×H×W, this rank's share) over the
    whole batch of every rank, and the number of values per channel; float32.

    Each rank's mean and variance (stable, float32) become float64 count, sum and sum of
    squares, summed across ranks by an autograd-aware all-reduce: the backward sums every
    rank's gradient with respect to the global statistics, as the global batch's would.
    """
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count:
        var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    else:  # an empty share still joins the collective
        var = mean = x.float().sum(dim=(0, 2, 3))
    mean64, var64 = mean.double(), var.double()
    local = torch.cat([mean64.new_full((1,), float(count)), mean64 * count,
                       (var64 + mean64 * mean64) * count])
    total = _SumAcrossRanks.apply(local)
    n = total[0]
    global_mean = total[1:channels + 1] / n
    global_var = (total[channels + 1:] / n - global_mean * global_mean).clamp_min(0)
    return global_mean.float(), global_var.float(), n.detach()


class _SumAcrossRanks(torch.autograd.Function):
    """A sum over all ranks whose backward is the same sum of the gradients (every rank's
    loss depends on every rank's input through it)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training with more than one rank, normalises by the statistics of
    the global batch (every rank's share) and updates its running statistics from them, as
    BatchNorm2d would on the whole batch. Eval, and one process, are plain BatchNorm2d.

    Same parameters and buffers as BatchNorm2d (its state dict loads into BN and back).
    ``drop`` and ``act`` keep the activation of a replaced timm BatchNormAct2d.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 drop: nn.Module | None = None, act: nn.Module | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _ranks() > 1:
            x = self._synced_forward(x)
        else:
            x = super().forward(x)
        return self.act(self.drop(x))

    def _synced_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        mean, var, count = global_batch_stats(x)
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{int(count)} across all ranks (input size {list(x.shape)})")
        shape = (1, -1, 1, 1)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (self.momentum if self.momentum is not None
                          else 1.0 / float(self.num_batches_tracked))
                unbiased = var * (count / (count - 1)).float()
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(x.dtype)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> SyncBatchNorm2d:
        """A synchronised copy of ``bn`` with its parameters, buffers and (timm) activation."""
        synced = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                     track_running_stats=bn.track_running_stats,
                     drop=getattr(bn, "drop", None), act=getattr(bn, "act", None))
        synced.load_state_dict(bn.state_dict())
        return synced.to(device=_device_of(bn)).train(bn.training)


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter(module.state_dict().values()), None)
    return tensor.device if tensor is not None else None


def _is_plain_batch_norm(module: nn.Module) -> bool:
    # exact types: subclasses with other behaviour (frozen BN, ghost BN) are left alone
    return type(module) in (nn.BatchNorm2d, BatchNormAct2d)


def _synced(bn: nn.Module, device: torch.device) -> nn.Module:
    convert = timm_convert_sync_batchnorm if device.type == "cuda" else \
        SyncBatchNorm2d.from_batch_norm
    synced = convert(bn)
    synced.unsynced_type = type(bn)  # what with_plain_batch_norm puts back
    return synced


def to_sync_batch_norm(model: nn.Module, device: torch.device) -> int:
    """Swap every plain BatchNorm2d / timm BatchNormAct2d of ``model`` in place for its
    synchronised form on ``device``'s kind (CUDA: PyTorch's SyncBatchNorm, timm's
    SyncBatchNormAct; otherwise :class:`SyncBatchNorm2d`); returns how many."""
    return replace_modules(model, _is_plain_batch_norm, lambda bn: _synced(bn, device))


def _is_synced(module: nn.Module) -> bool:
    return hasattr(module, "unsynced_type")


def _unsynced(bn: nn.Module) -> nn.Module:
    """The BatchNorm2d or BatchNormAct2d (its activation kept) that ``bn`` replaced."""
    kwargs = {"eps": bn.eps, "momentum": bn.momentum, "affine": bn.affine,
              "track_running_stats": bn.track_running_stats}
    if bn.unsynced_type is BatchNormAct2d:
        plain = BatchNormAct2d(bn.num_features, apply_act=False, **kwargs)
        plain.drop, plain.act = bn.drop, bn.act
    else:
        plain = nn.BatchNorm2d(bn.num_features, **kwargs)
    plain.load_state_dict(bn.state_dict())
    return plain.to(device=_device_of(bn)).train(bn.training)


def with_plain_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose synchronised batch norms are plain again (same weights and
    statistics): what is evaluated and saved, so that it needs no process group and has the
    structure a model built on one process has. ``model`` itself when it has none."""
    if not any(_is_synced(m) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    replace_modules(plain, _is_synced, _unsynced)
    return plain
