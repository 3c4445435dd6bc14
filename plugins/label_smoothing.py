from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class LabelSmoothing(Technique):
    """Label smoothing: shrink one-hot targets toward uniform.

    Helps: calibration and generalisation on most classification tasks; combines with
    mixup and cutmix (it also smooths their soft targets).
    Suggested: 0.1.
    Source: Szegedy et al., "Rethinking the Inception Architecture" (2016).
    """

    name = "label_smoothing"
    space = {"smoothing": FloatDistribution(0.0, 0.3)}
    defaults = {"smoothing": 0.1}
    limits = {"smoothing": (0.0, 0.99)}

    @hookimpl
    def build_loss(self, state):
        state.loss_options["label_smoothing"] = self.params["smoothing"]
