from __future__ import annotations

from optuna.distributions import CategoricalDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class GhostBatchNorm(Technique):
    """Ghost batch norm: batch-norm statistics from small virtual batches in training.

    Helps: large-batch training, where full-batch statistics regularise too little; the noise
    of small-batch statistics returns without shrinking the batch. Eval uses running stats.
    Suggested: virtual batch 16–32 (useful only well below the real batch size).
    Source: Hoffer et al., "Train longer, generalize better" (2017).
    """

    name = "ghost_batch_norm"
    space = {"virtual_batch": CategoricalDistribution([8, 16, 32, 64])}
    defaults = {"virtual_batch": 16}

    @hookimpl(tryfirst=True)  # before other surgery, which then sees BN-compatible modules
    def modify_model(self, state):
        from .ghost_batch_norm_layer import to_ghost_batch_norm

        if not to_ghost_batch_norm(state.model, self.params["virtual_batch"]):
            raise ValueError(f"ghost_batch_norm: model {state.recipe.model} has no BatchNorm2d "
                             "layers to replace")
