from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

MIN_SIZE = 8


def progressive_size(final_size: int, epoch: int, epochs: int, start_scale: float,
                     full_size_at: float) -> int:
    """Training resolution of ``epoch`` (from 0): ``start_scale`` × the final size at the first
    epoch, growing linearly to the final size at a ``full_size_at`` fraction of training
    (epoch / (epochs − 1)); the last epoch is always at full size."""
    progress = epoch / (epochs - 1) if epochs > 1 else 1.0
    scale = start_scale + (1 - start_scale) * min(progress / full_size_at, 1.0)
    return min(final_size, max(MIN_SIZE, round(final_size * scale)))


class ProgressiveResizing(Technique):
    """Progressive resizing: train early epochs at a lower resolution, growing to full size.

    Helps: cheaper early epochs (cost grows with pixels) and a coarse-to-fine curriculum;
    the final epochs run at the configured training size (after FixRes, its reduced size),
    so the network ends calibrated to it. Sizes never go below 8 px.
    Suggested: start_scale 0.5–0.75, full size reached at 50–80% of training.
    Source: Howard, fast.ai DAWNBench entry (2018); Tan & Le, "EfficientNetV2: Smaller Models
    and Faster Training" (2021).
    """

    name = "progressive_resizing"
    space = {
        "start_scale": FloatDistribution(0.5, 0.9),
        "full_size_at": FloatDistribution(0.25, 1.0),
    }
    defaults = {"start_scale": 0.6, "full_size_at": 0.75}
    limits = {"start_scale": (0.05, 1.0), "full_size_at": (0.01, 1.0)}

    @hookimpl(trylast=True)
    def configure_training(self, state):
        """Runs after techniques that set the training size (FixRes): that is the final one."""
        state.extras["progressive_resizing_final"] = state.train_image_size

    @hookimpl
    def on_epoch_start(self, state):
        state.train_image_size = progressive_size(
            state.extras["progressive_resizing_final"], state.epoch, state.epochs,
            self.params["start_scale"], self.params["full_size_at"])
