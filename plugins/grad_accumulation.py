from __future__ import annotations

from optuna.distributions import IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class GradAccumulation(Technique):
    """Gradient accumulation: sum the gradients of several batches into one optimizer step.

    Helps: a larger effective batch (batch_size × steps) than fits in memory, for recipes
    tuned at large batch sizes. Each micro-batch's loss is divided by ``steps``, so one step
    follows the gradient of the mean loss over the whole effective batch. The LR is not
    rescaled, and there are ``steps`` times fewer optimizer steps per epoch; batch norm still
    sees the small micro-batches.
    Suggested: steps 2–4; raise the LR with the effective batch (linear scaling rule).
    Source: Ott et al., "Scaling Neural Machine Translation" (2018) (delayed updates); Goyal
    et al., "Accurate, Large Minibatch SGD" (2017) (LR scaling).
    """

    name = "grad_accumulation"
    space = {"steps": IntDistribution(2, 8)}
    defaults = {"steps": 2}
    limits = {"steps": (1, 1024)}

    @hookimpl
    def configure_training(self, state):
        state.accumulation_steps = self.params["steps"]
