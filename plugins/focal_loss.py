from __future__ import annotations

from optuna.distributions import FloatDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique


class FocalLoss(Technique):
    """Focal loss: scale each sample's loss by (1 − p)^γ, p the probability of its target.

    Helps: class imbalance and many easy examples, by moving the weight of the loss to hard,
    misclassified ones; combines with class weights, label smoothing, soft targets and the
    sigmoid (binary) loss. On balanced data it mostly acts as a calibration regulariser.
    Suggested: gamma 1–3 (2 in the paper).
    Source: Lin et al., "Focal Loss for Dense Object Detection" (2017).
    """

    name = "focal_loss"
    space = {"gamma": FloatDistribution(0.5, 5.0)}
    defaults = {"gamma": 2.0}
    limits = {"gamma": (0.0, 20.0)}

    @hookimpl
    def build_loss(self, state):
        state.loss_options["focal_gamma"] = self.params["gamma"]
