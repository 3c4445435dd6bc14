from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique, When

if TYPE_CHECKING:
    import torch


def sam_perturbation(params: list[torch.Tensor], grads: list[torch.Tensor], rho: float,
                     adaptive: bool) -> list[torch.Tensor]:
    """The step to the sharpest nearby point: ρ·g/‖g‖ (SAM), or ρ·w²·g/‖|w|·g‖ (ASAM, which
    measures the neighbourhood relative to each weight's size, so rescaling a layer does not
    change it). One norm over all parameters; stays on the device (no host read)."""
    import torch

    scaled = torch._foreach_mul(grads, [p.abs() for p in params]) if adaptive else grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
    steps = torch._foreach_mul(scaled, [p.abs() for p in params]) if adaptive else \
        [g.clone() for g in grads]
    torch._foreach_mul_(steps, rho / (norm + 1e-12))
    return steps


class SAM(Technique):
    """Sharpness-aware minimisation: step with the gradient taken at the worst nearby weights.

    Helps: flatter minima that generalise better, most on small or noisy datasets and with
    strong augmentation; each optimizer step costs a second forward and backward (about 2×
    the training time). Works through ``state.closure()``: the second pass recomputes every
    micro-batch of the step (gradient accumulation), with every technique's loss terms
    (l1_penalty, triplet_loss, distillation), before gradient clipping, and EMA averages the
    weights it steps to. Batch-norm running statistics are updated by the first pass only.
    ``adaptive`` is ASAM (ρ then measured relative to the weights: larger values).
    Suggested: rho 0.05 (SGD) or 0.5–2 with adaptive.
    Source: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization" (2021); Kwon et al., "ASAM" (2021).
    """

    name = "sam"
    space = {"adaptive": CategoricalDistribution([False, True]),
             "rho": FloatDistribution(0.01, 2.0, log=True)}
    defaults = {"adaptive": False, "rho": 0.05}
    conditions = {"rho": When("adaptive", {False: FloatDistribution(0.01, 0.2, log=True),
                                           True: FloatDistribution(0.1, 2.0, log=True)})}
    limits = {"rho": (0.0, 10.0)}

    @hookimpl(tryfirst=True)  # before grad_clip: clipping then sees the final gradient
    def after_backward(self, state):
        import torch

        params = [p for p in state.model.parameters() if p.grad is not None]
        if not params:
            return
        steps = sam_perturbation(params, [p.grad for p in params], self.params["rho"],
                                 self.params["adaptive"])
        with torch.no_grad():
            torch._foreach_add_(params, steps)
        with _frozen_batch_norm_statistics(state.model):
            state.closure()
        with torch.no_grad():
            torch._foreach_sub_(params, steps)


class _frozen_batch_norm_statistics:
    """Batch norm normalises with the batch as usual but leaves its running statistics as
    they are (momentum 0): the second pass sees the same batch, counting it twice would
    skew them."""

    def __init__(self, model):
        from torch.nn.modules.batchnorm import _BatchNorm

        self.norms = [m for m in model.modules()
                      if isinstance(m, _BatchNorm) and m.track_running_stats]

    def __enter__(self):
        self.momenta = [bn.momentum for bn in self.norms]
        self.counts = [bn.num_batches_tracked.clone() for bn in self.norms]
        for bn in self.norms:
            bn.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for bn, momentum, count in zip(self.norms, self.momenta, self.counts, strict=True):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(count)
        return False
