from __future__ import annotations

import math

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique, When


def restart_factor(progress: float, cycles: int) -> float:
    """SGDR: ``cycles`` cosine cycles, each twice as long as the one before (T_mult = 2).

    The cycles fill [0, 1]; with 3 cycles they span 1/7, 2/7 and 4/7, restarting (back to
    the full LR) at 1/7 and 3/7.
    """
    units = progress * (2 ** cycles - 1)  # in lengths of the first cycle
    start, length = 0.0, 1.0
    for _ in range(cycles - 1):
        if units < start + length:
            break
        start, length = start + length, 2 * length
    return 0.5 * (1 + math.cos(math.pi * (units - start) / length))


def lr_factor(schedule: str, progress: float, cycles: int = 3) -> float:
    """LR multiplier at ``progress`` in [0, 1] of the post-warmup part of training."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "cosine_restarts":
        return restart_factor(progress, cycles)
    if schedule == "step":  # ÷10 at half and at three quarters of training
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if schedule == "exponential":  # down to 1% at the end
        return 0.01 ** progress
    return 1.0


def warmup_factor(shape: str, step: int, warm: int) -> float:
    """LR multiplier at ``step`` < ``warm`` of the warmup: linear or half-cosine rise to 1 at
    its last step, or a constant 0.1 (He et al.'s warmup for deep ResNets)."""
    if shape == "constant":
        return 0.1
    fraction = (step + 1) / warm
    if shape == "cosine":
        return 0.5 * (1 - math.cos(math.pi * fraction))
    return fraction


def warmup_then(schedule: str, total_steps: int, warmup: float, shape: str = "linear",
                cycles: int = 3):
    """Per-step multiplier: warmup of ``shape`` over a ``warmup`` fraction, then ``schedule``."""
    warm = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return warmup_factor(shape, step, warm)
        return lr_factor(schedule, (step - warm) / max(total_steps - warm, 1), cycles)

    return factor


class LRSchedule(Technique):
    """Learning-rate schedule with warmup: cosine, SGDR restarts, step, exponential or one-cycle.

    Helps: decaying the LR is worth several points of accuracy over a constant LR; warmup
    stabilises high LRs, large batches and AdamW early in training. Warmup rises linearly,
    along a half cosine, or holds 0.1×LR ("constant"); one-cycle uses its own warmup.
    cosine_restarts fits ``cycles`` cosine cycles (each twice as long as the last) into the
    post-warmup part; ``cycles`` is searched (and recorded) only with cosine_restarts.
    Suggested: cosine with 0–10% warmup; one-cycle for short budgets.
    Source: Loshchilov & Hutter, "SGDR" (2017); Goyal et al., "Accurate, Large Minibatch SGD"
    (2017); He et al., "Deep Residual Learning" (2016); Smith & Topin, "Super-Convergence"
    (2019).
    """

    name = "lr_schedule"
    optional = False
    space = {
        "schedule": CategoricalDistribution(["cosine", "cosine_restarts", "step",
                                             "exponential", "onecycle", "constant"]),
        "warmup": FloatDistribution(0.0, 0.3),
        "warmup_shape": CategoricalDistribution(["linear", "cosine", "constant"]),
        "cycles": IntDistribution(2, 4),
    }
    conditions = {"cycles": When("schedule", {"cosine_restarts": IntDistribution(2, 4)})}
    defaults = {"schedule": "cosine", "warmup": 0.0, "warmup_shape": "linear", "cycles": 3}
    limits = {"warmup": (0.0, 0.9), "cycles": (1, 10)}

    @hookimpl
    def build_scheduler(self, state):
        import torch

        total = max(state.total_steps, 1)
        if self.params["schedule"] == "onecycle":  # its own warmup: pct_start
            max_lr = [g["lr"] for g in state.optimizer.param_groups]
            return torch.optim.lr_scheduler.OneCycleLR(
                state.optimizer, max_lr=max_lr, total_steps=total + 1,
                pct_start=max(self.params["warmup"], 0.05), cycle_momentum=False)
        factor = warmup_then(self.params["schedule"], total, self.params["warmup"],
                             self.params["warmup_shape"], self.params["cycles"])
        return torch.optim.lr_scheduler.LambdaLR(state.optimizer, factor)
