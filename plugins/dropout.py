from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class Dropout(Technique):
    """Dropout before the classifier: zero a random fraction of pooled features in training.

    Helps: larger models on small datasets; little effect on small models or long schedules
    with strong augmentation.
    Suggested: 0.1–0.3.
    Source: Srivastava et al., "Dropout" (2014).
    """

    name = "dropout"
    space = {"rate": FloatDistribution(0.0, 0.5)}
    defaults = {"rate": 0.2}
    limits = {"rate": (0.0, 0.99)}

    @hookimpl
    def model_kwargs(self, state):
        return {"drop_rate": self.params["rate"]}
