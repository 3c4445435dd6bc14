from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class GradClip(Technique):
    """Gradient clipping: rescale the gradient when its global L2 norm exceeds a maximum.

    Helps: stability with high LRs, AdamW, and losses with rare huge gradients; rarely
    changes accuracy when training is already stable.
    Suggested: max_norm 1.0.
    Source: Pascanu et al., "On the difficulty of training RNNs" (2013).
    """

    name = "grad_clip"
    space = {"max_norm": FloatDistribution(0.1, 10.0, log=True)}
    defaults = {"max_norm": 1.0}
    limits = {"max_norm": (1e-6, None)}

    @hookimpl
    def after_backward(self, state):
        import torch

        torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.params["max_norm"],
                                       foreach=True)
