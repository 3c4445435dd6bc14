from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class StochasticDepth(Technique):
    """Stochastic depth (drop path): skip random residual branches per sample in training.

    Helps: deep residual networks and vision transformers; the rate grows linearly with
    depth up to the given maximum.
    Suggested: 0.05–0.2 for ResNets, 0.1–0.4 for ViTs.
    Source: Huang et al., "Deep Networks with Stochastic Depth" (2016).
    """

    name = "stochastic_depth"
    space = {"rate": FloatDistribution(0.0, 0.3)}
    defaults = {"rate": 0.1}
    limits = {"rate": (0.0, 0.99)}

    @hookimpl
    def model_kwargs(self, state):
        return {"drop_path_rate": self.params["rate"]}
