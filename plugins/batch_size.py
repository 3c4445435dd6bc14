from __future__ import annotations

from optuna.distributions import CategoricalDistribution

from automl.functional import lr_scale
from automl.hookspecs import hookimpl
from automl.technique import Technique


class BatchSize(Technique):
    """Batch size, with the learning-rate scaling rule that goes with it.

    Helps: at a fixed epoch budget the batch size sets the number of optimizer steps, one of
    the strongest levers of a short recipe: smaller batches take more (noisier) steps, larger
    ones fewer. The searched LR is the LR at the space's own ``data.batch_size`` (the
    reference); a trial at another batch size multiplies it by the rule: ``linear``
    (batch / reference, Goyal et al.), ``sqrt`` (its square root, Krizhevsky; Hoffer et al.,
    for adaptive optimizers) or ``none``. With gradient accumulation the effective batch
    (batch × steps) is what is scaled.
    Suggested: 64–256 for small images on one device; linear for SGD, sqrt for AdamW/LAMB.
    Source: Goyal et al., "Accurate, Large Minibatch SGD" (2017); Krizhevsky, "One weird
    trick for parallelizing convolutional neural networks" (2014); Hoffer et al., "Train
    longer, generalize better" (2017).
    """

    name = "batch_size"
    space = {
        "size": CategoricalDistribution([32, 64, 128, 256, 512]),
        "lr_scaling": CategoricalDistribution(["linear", "sqrt", "none"]),
    }
    defaults = {"size": 128, "lr_scaling": "linear"}

    @classmethod
    def check_value(cls, param, value):
        if param == "size":  # any positive batch size may be fixed, not only the listed ones
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return f"expected an integer >= 1, got {value!r}"
            return None
        return super().check_value(param, value)

    @hookimpl
    def configure_training(self, state):
        state.batch_size = self.params["size"]

    @hookimpl
    def configure_param_groups(self, state):
        """After every configure_training hook (gradient accumulation's steps are known) and
        before the optimizer is built."""
        effective = state.batch_size * state.accumulation_steps
        state.lr_scale *= lr_scale(self.params["lr_scaling"], effective,
                                   state.recipe.data["batch_size"])
